#!/usr/bin/env bash
# Settings of the Docker image, shared by build.sh, run_training.sh and test_image.sh (meant to be sourced).
# Each can be overridden from the environment.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
BASE_IMAGE="${BASE_IMAGE:-python:${PYTHON_VERSION}-slim}"
PACKAGE_VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO_ROOT/pyproject.toml")"
IMAGE_NAME="${IMAGE_NAME:-image-classifier}"
IMAGE_TAG="${IMAGE_TAG:-${PACKAGE_VERSION}-py${PYTHON_VERSION}}"
IMAGE="${IMAGE_NAME}:${IMAGE_TAG}"
export REPO_ROOT PYTHON_VERSION BASE_IMAGE IMAGE_NAME IMAGE_TAG IMAGE
