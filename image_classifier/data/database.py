"""The mocked database connection of the notebook, with the password kept secret.

The notebook "fetched" CIFAR-10 through a database call that only simulated one; the package keeps that
seam so a real connection can replace it later. The password is wrapped in `Secret`, whose repr and str
never show it (see `image_classifier.secret`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources

import yaml

from image_classifier.errors import UserError
from image_classifier.secret import Secret

logger = logging.getLogger(__name__)

_SETTINGS_RESOURCE = "db_connect.yaml"
_REQUIRED_KEYS = ("db_host", "db_name", "db_user")


@dataclass(frozen=True)
class DatabaseSettings:
    db_host: str
    db_name: str
    db_user: str


@dataclass(frozen=True)
class DatabaseConnection:
    """What a real driver's `connect()` would return; here it only proves the credentials were given."""

    settings: DatabaseSettings
    password: Secret

    def describe(self) -> str:
        return f"{self.settings.db_user}@{self.settings.db_host}/{self.settings.db_name}"


def load_settings() -> DatabaseSettings:
    """Read the packaged `db_connect.yaml` (works from a wheel, not only from a checkout)."""
    text = resources.files(__package__).joinpath(_SETTINGS_RESOURCE).read_text(encoding="utf-8")
    raw = yaml.safe_load(text) or {}
    missing = [key for key in _REQUIRED_KEYS if not raw.get(key)]
    if missing:
        raise UserError(f"{_SETTINGS_RESOURCE} lacks {', '.join(missing)}")
    return DatabaseSettings(**{key: str(raw[key]) for key in _REQUIRED_KEYS})


def connect(settings: DatabaseSettings, password: Secret) -> DatabaseConnection:
    """Simulate opening the database connection the notebook's data came through."""
    if not password.reveal():
        raise UserError("the database password is empty: pass --db_pass or set DB_PASSWORD")
    connection = DatabaseConnection(settings=settings, password=password)
    logger.info("connected to database %s (mocked)", connection.describe())
    return connection
