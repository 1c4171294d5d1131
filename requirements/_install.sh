# Shared by the requirements-*.sh installers; not meant to be run by itself.
# Installs hash-checked lock files into the active Python ("${PYTHON:-python}") and records which lock
# files the environment came from, so that run.json can name them.

install_lock_files() {
    local python="${PYTHON:-python}" lock_dir="$1"
    shift
    local args=() name
    for name in "$@"; do
        args+=(-r "$lock_dir/requirements-$name.txt")
    done
    "$python" -m pip install --require-hashes "${args[@]}"
    local prefix
    prefix="$("$python" -c 'import sys; print(sys.prefix)')"
    (cd "$lock_dir" && for name in "$@"; do sha256sum "requirements-$name.txt"; done) >"$prefix/image-classifier-lock.sha256"
}

install_git_hook() {
    local repo="$1"
    if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        (cd "$repo" && "${PYTHON:-python}" -m pre_commit install)
    else
        echo "not a git checkout: skipping 'pre-commit install'" >&2
    fi
}
