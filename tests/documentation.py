"""The documentation as the tests read it: the README (the newcomer's page) and the reference pages in docs/.

Tests that check what the documentation states about the code read it from here, so that a page can be
split or renamed without a test silently reading nothing: every reader names the page it quotes."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import REPO_ROOT

README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"


def pages() -> list[Path]:
    """The README, then every page of docs/, in name order."""
    return [README, *sorted(DOCS.glob("*.md"))]


def page_text(name: str) -> str:
    """One page: "README.md", or a page of docs/ by its file name ("serving.md")."""
    path = README if name == "README.md" else DOCS / name
    return path.read_text()


def all_text() -> str:
    """The README and every page of docs/, one after the other."""
    return "\n".join(path.read_text() for path in pages())


def section(name: str, heading: str) -> str:
    """The part of a page under a heading (any level, given without its #s), up to the next heading of the same
    or a higher level; lines in code blocks (a shell comment starts with # too) are never headings."""
    lines = page_text(name).splitlines(keepends=True)
    start = level = None
    in_code = False
    for number, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        found = None if in_code else re.match(r"(#+) (.*)", line)
        if found and start is None and found.group(2).strip() == heading:
            start, level = number + 1, len(found.group(1))
        elif found and start is not None and len(found.group(1)) <= level:
            return "".join(lines[start:number])
    assert start is not None, f"{name} has no heading {heading!r}"
    return "".join(lines[start:])
