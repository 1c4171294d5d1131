"""What the README and the docs state about the package itself agree with the package."""

from __future__ import annotations

import re
import subprocess
import tomllib

import image_classifier
from tests.conftest import REPO_ROOT
from tests.documentation import all_text, section

PACKAGING = section("operations.md", "Python packaging")


def test_the_packaging_section_names_every_console_script():
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    sentence = re.search(r"the console scripts(.*?)\.", PACKAGING, re.DOTALL).group(1)
    assert re.findall(r"`(\w+)`", sentence) == list(scripts)


def test_versions_the_readme_shows_are_the_packages():
    # A version written out goes stale with the next commit: the docs show the forms, and they hold.
    version = image_classifier.__version__
    shown = set(re.findall(r"\b\d+\.\d+(?:\.\d+)?\.dev\d+\+g[0-9a-f]+(?:\.d\d{8})?\b", all_text()))
    assert shown <= {version}, shown
    tags = subprocess.run(["git", "tag", "--list", "v*"], cwd=REPO_ROOT, capture_output=True, text=True).stdout
    forms = {"0.1.dev<N>+g<commit>", "1.2.1.dev<N>+g<commit>"}
    assert all(f"`{form}`" in PACKAGING for form in forms)
    if not tags.strip():  # no release yet: the form before the first tag
        assert re.fullmatch(r"0\.1\.dev\d+\+g[0-9a-f]+(\.d\d{8})?", version), version


def test_the_requirements_section_says_why_each_direct_dependency_is_there():
    # A dependency nobody can explain is one nobody dares remove: each one asked for in a .in file is named
    # in the section that says what it is for, as code (`name`), so that a word of the prose cannot stand in.
    requirements = section("operations.md", "Requirements and lock files").lower()
    named = set(re.findall(r"`([a-z0-9][a-z0-9._-]*)`", requirements))
    asked = set()
    for path in sorted((REPO_ROOT / "requirements").glob("requirements-*.in")):
        for line in path.read_text().splitlines():
            line = line.split("#")[0].strip()
            if line and not line.startswith("-"):
                asked.add(re.split(r"[<>=!~\[ ;]", line)[0].lower())
    assert {"mkdocs", "mkdocs-material", "torch"} <= asked
    assert sorted(asked - named) == []
