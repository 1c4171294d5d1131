#!/usr/bin/env bash
# Remove what create_build_context.sh put into the repository.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/configure.sh"

rm -f "$REPO_ROOT"/docker/image_classifier-*.whl "$REPO_ROOT"/docker/{requirements-prod.txt,requirements-prod.sh,_install.sh}
rm -rf "$REPO_ROOT/dist" "$REPO_ROOT"/*.egg-info "$REPO_ROOT/build"
