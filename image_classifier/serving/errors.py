"""Errors a user (or an HTTP client) can cause while asking for predictions."""

from image_classifier.errors import UserError


class ModelSourceError(UserError):
    """The model to serve cannot be found, read, checked or named (its classes)."""


class ImageError(UserError):
    """An upload or file that cannot be turned into the model's input; `status` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
