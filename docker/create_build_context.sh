#!/usr/bin/env bash
# Put what the image needs into docker/: the package's wheel and the production lock file and installer.
# The wheel is built by $PYTHON (configure.sh: the project's venv) with its locked build tools, without build
# isolation, so nothing is fetched and no other Python needs the `build` module.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/configure.sh"

"$PYTHON" -m build --wheel --no-isolation --outdir "$REPO_ROOT/dist" "$REPO_ROOT"
cp "$REPO_ROOT"/dist/image_classifier-"$PACKAGE_VERSION"-*.whl "$REPO_ROOT/docker/"
cp "$REPO_ROOT"/requirements/{requirements-prod.txt,requirements-prod.sh,_install.sh} "$REPO_ROOT/docker/"
