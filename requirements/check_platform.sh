#!/usr/bin/env bash
# Stop at once, saying what to do instead, where the lock files cannot install (the Makefile runs this before
# it creates the venv):     bash requirements/check_platform.sh PYTHON
# The locks were resolved with CPython 3.11 on Linux x86-64: other Python versions resolve other environment
# markers (numpy 2.4 already needs 3.11), the CUDA packages torch pulls in (nvidia-*, triton) exist for Linux
# only, and only x86-64 is built and tested here. torch's wheels are manylinux_2_28: glibc 2.28 or newer.
set -euo pipefail

python="${1:-python3}"
required="CPython 3.11 on Linux x86_64 with glibc 2.28 or newer"
advice="use the Docker image (docs/operations.md, Docker), or install without the locks:"
advice+=" python3 -m venv .venv && .venv/bin/pip install -e . (docs/operations.md, Troubleshooting)"

describe='import platform, sys
libc, libc_version = platform.libc_ver()
print(sys.implementation.name, "%d.%d" % sys.version_info[:2], platform.system(), platform.machine(),
      libc or "no-libc", libc_version or "0")'
if ! found="$("$python" -c "$describe" 2>/dev/null)"; then
    echo "error: '$python' does not run as Python 3; the lock files need $required: give one with PYTHON=...," \
        "or $advice" >&2
    exit 1
fi
read -r implementation version system machine libc libc_version <<<"$found"

glibc_recent_enough() {
    [ "$libc" = glibc ] && [ "$(printf '%s\n' 2.28 "$libc_version" | sort -V | head -1)" = 2.28 ]
}

if [ "$implementation $version $system $machine" != "cpython 3.11 Linux x86_64" ] || ! glibc_recent_enough; then
    echo "error: the lock files install on $required only; '$python' is $implementation $version on $system" \
        "$machine ($libc $libc_version). Give a CPython 3.11 with PYTHON=... (make demo PYTHON=python3.11)," \
        "or $advice" >&2
    exit 1
fi
