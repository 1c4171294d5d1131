"""`Secret`: a string that never shows itself (the database password, the service's bearer token).

Its repr and str hide the value, so it cannot slip into a log line, a repr, a written file or an exception
message; the command-line helpers (`image_classifier.cli`) read every secret into one.
"""

from __future__ import annotations


class Secret:
    """A string that never shows itself; call `reveal()` at the one place that needs the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __reduce__(self):
        # Pickling would write the password into a checkpoint or a multiprocessing pipe.
        raise TypeError("a Secret cannot be pickled")
