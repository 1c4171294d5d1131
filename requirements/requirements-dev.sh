#!/usr/bin/env bash
# Install the cq, build and dev requirements, the git pre-commit hook and this package (editable) into the active Python
# environment (${PYTHON:-python}), hash-checked from the lock file(s).
# Works executed or sourced, from any directory, and stops at the first error:
#     source requirements/requirements-dev.sh      or      bash requirements/requirements-dev.sh

# The body runs in a subshell, so that `set -e` stops the install without closing a shell that sourced it.
_image_classifier_install_dev() (
    set -euo pipefail
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    # shellcheck source=requirements/_install.sh
    source "$here/_install.sh"
    install_lock_files "$here" cq build dev
    install_git_hook "$here/.."
    "${PYTHON:-python}" -m pip install --no-deps --no-build-isolation -e "$here/.."
)
_image_classifier_install_dev "$@"
