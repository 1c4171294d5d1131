#!/usr/bin/env bash
# Install the build requirements (python -m build) into the active Python
# environment (${PYTHON:-python}), hash-checked from the lock file(s).
# Works executed or sourced, from any directory, and stops at the first error:
#     source requirements/requirements-build.sh      or      bash requirements/requirements-build.sh

# The body runs in a subshell, so that `set -e` stops the install without closing a shell that sourced it.
_image_classifier_install_build() (
    set -euo pipefail
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    # shellcheck source=requirements/_install.sh
    source "$here/_install.sh"
    install_lock_files "$here" build
)
_image_classifier_install_build "$@"
