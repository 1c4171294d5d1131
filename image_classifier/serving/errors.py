"""Errors a user (or an HTTP client) can cause while asking for predictions."""

from image_classifier.errors import UserError


class ModelSourceError(UserError):
    """The model to serve cannot be found, read, checked or named (its classes)."""
