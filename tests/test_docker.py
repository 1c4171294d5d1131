"""docker/: the image's settings and provenance (the image itself is built and run by `make docker-test`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import REPO_ROOT

DOCKER = REPO_ROOT / "docker"


def configure(**env: str) -> dict[str, str]:
    """The settings docker/configure.sh exports, sourced as build.sh does, from another directory."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "IMAGE", "PACKAGE_"))}
    environment.update(env)
    shown = subprocess.run(
        ["bash", "-c", f"source {DOCKER}/configure.sh && env -0"],
        cwd="/",
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(item.split("=", 1) for item in shown.split("\0") if "=" in item)


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=True).stdout


def test_version_and_commit_come_from_git_and_the_tag_holds_no_plus():
    settings = configure(PYTHON=sys.executable)
    version = subprocess.run(
        [sys.executable, "-m", "setuptools_scm", "--root", str(REPO_ROOT)], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert settings["PACKAGE_VERSION"] == version
    assert settings["SOURCE_COMMIT"] == git("rev-parse", "HEAD").strip()
    assert settings["IMAGE_TAG"] == version.replace("+", "-") + "-py3.11"
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", settings["IMAGE_TAG"])  # Docker's tag grammar
    assert settings["IMAGE"] == f"image-classifier:{settings['IMAGE_TAG']}"


def test_without_setuptools_scm_the_version_still_names_the_commit(tmp_path):
    no_scm = tmp_path / "python"
    no_scm.write_text('#!/usr/bin/env bash\necho "$0: No module named setuptools_scm" >&2\nexit 1\n')
    no_scm.chmod(0o755)
    settings = configure(PYTHON=str(no_scm))
    commit = git("rev-parse", "HEAD").strip()
    assert settings["PACKAGE_VERSION"] == f"0+g{commit[:10]}"
    assert settings["IMAGE_TAG"] == f"0-g{commit[:10]}-py3.11"


def test_the_source_label_comes_from_github_actions_only():
    assert configure(PYTHON=sys.executable)["IMAGE_SOURCE"] == ""  # a local remote URL may hold credentials
    settings = configure(PYTHON=sys.executable, GITHUB_SERVER_URL="https://github.com", GITHUB_REPOSITORY="o/r")
    assert settings["IMAGE_SOURCE"] == "https://github.com/o/r"


def test_the_dockerfile_labels_the_image_from_build_arguments_after_its_heavy_layers():
    lines = [line.strip() for line in (DOCKER / "Dockerfile").read_text().splitlines()]
    label = "\n".join(lines[next(i for i, line in enumerate(lines) if line.startswith("LABEL")) :])
    for name, argument in [("version", "PACKAGE_VERSION"), ("revision", "SOURCE_COMMIT"), ("source", "IMAGE_SOURCE")]:
        assert f'org.opencontainers.image.{name}="${{{argument}}}"' in label
        assert f'--build-arg {argument}="${argument}"' in (DOCKER / "build.sh").read_text()
    last_run = max(i for i, line in enumerate(lines) if line.startswith("RUN"))
    assert all(i > last_run for i, line in enumerate(lines) if line.startswith(("ARG PACKAGE_VERSION", "LABEL")))


def test_the_docker_test_removes_only_images_it_labelled():
    script = (DOCKER / "test_image.sh").read_text()
    commands = [line.strip() for line in script.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in commands if "prune" in line]
    removals = [line for line in commands if "docker image rm" in line or "docker rmi" in line]
    assert removals and all('docker image rm "$id"' in line for line in removals), removals
    # The only images it removes are those listed by its own label (and never the one it just built).
    assert 'for id in $(docker image ls --quiet --no-trunc --filter "label=$TEST_LABEL"); do' in commands
    assert 'build_args="--force-rm --label $TEST_LABEL"' in commands
