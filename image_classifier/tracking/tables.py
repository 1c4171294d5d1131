"""How `image_classifier_runs` prints rows: aligned tables for people, CSV for spreadsheets, strict JSON
for programs; and the one rule for a value in a cell. Text from a run's files is shown so that it can drive
neither a terminal nor a spreadsheet."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from image_classifier.durable_files import to_strict_json

SHA_PREFIX = 12  # enough to tell models apart by eye; the full hash is in `show --full` and run.json


def printable(text: str) -> str:
    """`text` with control characters shown as escapes (\\x1b): text from a run's files must not move the
    cursor, clear the screen or break a table's lines on the terminal that prints it."""
    return "".join(char if char.isprintable() else ascii(char)[1:-1] for char in text)


def cell(value) -> str:
    """A value as the text of one table cell ("-" for none)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        # Four significant digits tell losses and accuracies apart; throughputs need no decimals.
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return printable(", ".join(map(str, value))) or "-"
    return printable(str(value))


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    cells = [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(column), *(len(line[index]) for line in cells)]) for index, column in enumerate(columns)]
    lines = [columns, *cells]
    return "\n".join("  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip() for line in lines)


def indent(text: str) -> str:
    """`text` two spaces in, as a section's body under its title."""
    return "\n".join("  " + line for line in text.splitlines())


# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection): text from a run's
# files (a hand-edited run.json, a registry entry) must never become one.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\0")  # OWASP ASVS 1.2.10 names the null too


def csv_cell(value):
    """`value` for a CSV cell: lists joined with "; ", text that a spreadsheet would run as a formula quoted
    with a leading apostrophe (what spreadsheets show as plain text); numbers as they are."""
    if isinstance(value, (list, tuple)):
        value = "; ".join(map(str, value))
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def format_csv(rows: Sequence[dict], columns: Sequence[str]) -> str:
    stream = io.StringIO()
    # RFC 4180's line end: the writer then quotes a field holding a lone CR too, which readers and
    # spreadsheets would otherwise take for the end of a row.
    writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: csv_cell(value) for key, value in row.items()})
    return stream.getvalue().removesuffix("\r\n")


def format_rows(rows: Sequence[dict], columns: Sequence[str], output_format: str) -> str:
    """`rows` in one of the `--format`s: "table", "csv" or "json" (only `columns`, in their order)."""
    if output_format == "json":
        return to_strict_json([{column: row.get(column) for column in columns} for row in rows]).rstrip("\n")
    if output_format == "csv":
        return format_csv(rows, columns)
    return format_table(rows, columns)
