"""The package's one clock for records: the UTC time, to the second, as ISO 8601 ("2026-12-01T23:49:08+00:00")."""

from __future__ import annotations

import datetime


def utc_timestamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
