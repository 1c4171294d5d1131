#!/usr/bin/env bash
# Put what the image needs into docker/: the package's wheel and the production lock file and installer.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/configure.sh"

"${PYTHON:-python3}" -m build --wheel --outdir "$REPO_ROOT/dist" "$REPO_ROOT"
cp "$REPO_ROOT"/dist/image_classifier-"$PACKAGE_VERSION"-*.whl "$REPO_ROOT/docker/"
cp "$REPO_ROOT"/requirements/{requirements-prod.txt,requirements-prod.sh,_install.sh} "$REPO_ROOT/docker/"
