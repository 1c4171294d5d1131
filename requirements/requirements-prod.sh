#!/usr/bin/env bash
# Install the production requirements (what the trainer needs) into the active Python
# environment (${PYTHON:-python}), hash-checked from the lock file(s).
# Works executed or sourced, from any directory, and stops at the first error:
#     source requirements/requirements-prod.sh      or      bash requirements/requirements-prod.sh

# The body runs in a subshell, so that `set -e` stops the install without closing a shell that sourced it.
_image_classifier_install_prod() (
    set -euo pipefail
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    # shellcheck source=requirements/_install.sh
    source "$here/_install.sh"
    install_lock_files "$here" prod
)
_image_classifier_install_prod "$@"
