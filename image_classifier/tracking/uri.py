"""Which MLflow tracking server, if any: from an option, else from MLflow's own environment variable."""

from __future__ import annotations

import os
import urllib.parse

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"


def tracking_uri_from(option: str | None) -> str | None:
    """The option's value, else $MLFLOW_TRACKING_URI; None (no MLflow at all) when neither is set."""
    return option or os.environ.get(TRACKING_URI_ENV) or None


def redacted(uri: str) -> str:
    """The URI without user name and password (http://user:secret@host/ -> http://host/), for logs and files."""
    parts = urllib.parse.urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
