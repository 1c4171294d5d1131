#!/usr/bin/env bash
# Settings of the Docker image, shared by build.sh, run_training.sh and test_image.sh (meant to be sourced).
# Each can be overridden from the environment.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The Python that builds the wheel and computes its version: the project's venv where there is one (it has
# the build lock: build, setuptools-scm), else python3 with requirements/requirements-build.sh installed.
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$REPO_ROOT/.venv/bin/python" ]; then
        PYTHON="$REPO_ROOT/.venv/bin/python"
    else
        PYTHON=python3
    fi
fi

# The commit the image is built from (empty outside a git checkout).
_image_classifier_source_commit() {
    git -C "$REPO_ROOT" rev-parse --verify --quiet HEAD 2>/dev/null || true
}

# The version the wheel gets, from git through setuptools-scm: 0.1.dev28+g3f71d8a28 (".d<date>" added when the
# tree has uncommitted changes). Without setuptools-scm, a version that still names the commit.
_image_classifier_package_version() {
    local commit
    if "$PYTHON" -m setuptools_scm --root "$REPO_ROOT" --config "$REPO_ROOT/pyproject.toml" 2>/dev/null; then
        return
    fi
    commit="$(_image_classifier_source_commit)"
    if [ -n "$commit" ]; then
        echo "0+g${commit:0:10}"
    else
        echo "0+unknown"
    fi
}

PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
BASE_IMAGE="${BASE_IMAGE:-python:${PYTHON_VERSION}-slim}"
SOURCE_COMMIT="${SOURCE_COMMIT:-$(_image_classifier_source_commit)}"
PACKAGE_VERSION="${PACKAGE_VERSION:-$(_image_classifier_package_version)}"
# The repository's web address for the org.opencontainers.image.source label: known in GitHub Actions only
# (a local remote URL may hold credentials).
IMAGE_SOURCE="${IMAGE_SOURCE:-${GITHUB_REPOSITORY:+${GITHUB_SERVER_URL:-https://github.com}/${GITHUB_REPOSITORY}}}"
IMAGE_NAME="${IMAGE_NAME:-image-classifier}"
# A Docker tag allows only letters, digits, "_", "." and "-": 0.1.dev28+g3f71d8a28 is tagged 0.1.dev28-g3f71d8a28.
IMAGE_TAG="${IMAGE_TAG:-$(printf '%s' "$PACKAGE_VERSION" | tr -c 'A-Za-z0-9_.-' '-')-py${PYTHON_VERSION}}"
IMAGE="${IMAGE_NAME}:${IMAGE_TAG}"
export REPO_ROOT PYTHON PYTHON_VERSION BASE_IMAGE SOURCE_COMMIT PACKAGE_VERSION IMAGE_SOURCE IMAGE_NAME IMAGE_TAG IMAGE
