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
