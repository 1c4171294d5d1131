#!/usr/bin/env bash
# Run a code-quality tool for pre-commit: from the active virtual environment, else from the repository's
# .venv (made by `make requirements`), else from PATH. So the git hook works without activating a venv.
#     scripts/run_tool.sh flake8 [args...]
set -euo pipefail
tool="$1"
shift
for bin_dir in "${VIRTUAL_ENV:+$VIRTUAL_ENV/bin}" "$(git rev-parse --show-toplevel)/.venv/bin"; do
    if [ -n "$bin_dir" ] && [ -x "$bin_dir/$tool" ]; then
        exec "$bin_dir/$tool" "$@"
    fi
done
exec "$tool" "$@"
