#!/usr/bin/env bash
# Build the training image with docker/build.sh and train in a container exactly as the training workflow
# does, then check the outputs and the image's provenance on the host. `make docker-test`; CI runs it.
#
# Where a Docker engine already answers (`docker info` works), it uses that engine as it is, as any user
# allowed to use it: no root, nothing installed, no engine of its own; the base image is BASE_IMAGE (default
# python:3.11-slim) and the build's pip uses PyPI.
# Where none answers (our CI machines), it sets up, as root, what is missing, and stops at the end what it
# started:
#   - Debian's docker.io engine, started with its own data root and socket under $WORK;
#   - a local base image (debootstrap bookworm with python3) carrying the host's CA bundle, so that pip in
#     the build can verify TLS here: this test base is the only image that needs it;
#   - a wheelhouse of the locked production requirements, served on 127.0.0.1 as the build's pip index
#     (the Dockerfile's PIP_INDEX_URL), so the 5 GB of PyTorch come from this machine's disk.
# Either way the image is built under its own name, image-classifier-test, with the label
# image-classifier.docker-test=true, and the test removes only images carrying that label: the earlier test
# images. The latest stays, so that on a running engine the next run reuses its layers (`docker rmi` removes
# it); the local set-up's wheelhouse changes address each run, and so the layers.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
WORK="${WORK:-/tmp/image-classifier-docker-test}"
TEST_BASE_IMAGE="image-classifier-test-base:bookworm"
TEST_LABEL="image-classifier.docker-test=true"
PYTHON="${PYTHON:-$repo/.venv/bin/python}"
export IMAGE_NAME="${IMAGE_NAME:-image-classifier-test}"
started_pids=()

log() { printf '== %s\n' "$*" >&2; }

cleanup() {
    local pid
    for pid in "${started_pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    # dockerd leaves its network namespace mounted when it stops.
    if [ -d "$WORK/engine/exec/netns" ]; then
        umount "$WORK"/engine/exec/netns/* 2>/dev/null || true
    fi
    rm -rf "$WORK/wheelhouse" "$WORK/run"
}
trap cleanup EXIT

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: $1, and setting it up needs root" >&2
        exit 1
    fi
}

start_local_engine() {
    need_root "no Docker engine answers"
    if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
        log "installing Debian's docker.io and debootstrap"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io debootstrap >/dev/null \
            || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io debootstrap >/dev/null; }
    fi
    mkdir -p "$WORK/engine"
    export DOCKER_HOST="unix://$WORK/engine/docker.sock"
    if ! docker info >/dev/null 2>&1; then
        log "starting dockerd ($DOCKER_HOST)"
        dockerd --data-root "$WORK/engine/data" --exec-root "$WORK/engine/exec" --pidfile "$WORK/engine/docker.pid" \
            -H "$DOCKER_HOST" --storage-driver overlay2 >"$WORK/engine/dockerd.log" 2>&1 &
        started_pids+=("$!")
        for _ in $(seq 60); do
            docker info >/dev/null 2>&1 && break
            sleep 1
        done
        docker info >/dev/null || { tail -20 "$WORK/engine/dockerd.log" >&2; exit 1; }
    fi
}

make_base_image() {
    if docker image inspect "$TEST_BASE_IMAGE" >/dev/null 2>&1; then
        return
    fi
    need_root "no base image"
    log "building the local base image $TEST_BASE_IMAGE with debootstrap"
    local rootfs="$WORK/rootfs"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" \
        http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    tar -C "$rootfs" -c . | docker import - "$TEST_BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
}

serve_wheelhouse() {
    log "collecting the locked production wheels"
    local wheelhouse="$WORK/wheelhouse"
    rm -rf "$wheelhouse"
    "$PYTHON" -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
        -r "$repo/requirements/requirements-prod.txt" -d "$wheelhouse"
    # A PEP 503 "simple" index over the files: one folder per normalised project name.
    "$PYTHON" - "$wheelhouse" <<'PY'
import re, sys
from pathlib import Path
root = Path(sys.argv[1])
for wheel in root.glob("*.whl"):
    project = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
    page = root / "simple" / project
    page.mkdir(parents=True, exist_ok=True)
    with (page / "index.html").open("a") as index:
        index.write(f'<a href="../../{wheel.name}">{wheel.name}</a><br>\n')
PY
    local port
    port="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    "$PYTHON" -m http.server --bind 127.0.0.1 --directory "$wheelhouse" "$port" >"$WORK/http.log" 2>&1 &
    started_pids+=("$!")
    INDEX_URL="http://127.0.0.1:$port/simple/"
}

remove_earlier_test_images() {
    # Only this test's own images, found by their label: never an image someone else built or pulled. Each commit
    # gives a new tag, so earlier test images are removed whether or not this build took their tag.
    local current id
    current="$(docker image inspect --format '{{.Id}}' "$IMAGE")"
    for id in $(docker image ls --quiet --no-trunc --filter "label=$TEST_LABEL"); do
        if [ "$id" != "$current" ]; then
            docker image rm "$id" >/dev/null || log "kept $id: docker could not remove it"
        fi
    done
}

check_label() {
    local name="$1" expected="$2" found
    found="$(docker image inspect --format "{{ index .Config.Labels \"$name\" }}" "$IMAGE")"
    [ "$found" = "$expected" ] || { echo "error: label $name is '$found', expected '$expected'" >&2; exit 1; }
}

mkdir -p "$WORK"
[ -x "$PYTHON" ] || make -C "$repo" requirements
build_args="--force-rm --label $TEST_LABEL"
if docker info >/dev/null 2>&1; then
    log "using the running Docker engine as it is"
else
    start_local_engine
    if [ -z "${BASE_IMAGE:-}" ]; then
        make_base_image
        export BASE_IMAGE="$TEST_BASE_IMAGE"
    fi
    serve_wheelhouse
    build_args+=" --network host --build-arg PIP_INDEX_URL=$INDEX_URL"
    # The engine started here may have no port publishing (no iptables): the service uses the host's network.
    export CHECK_NETWORK=host
fi
export PYTHON
source "$here/configure.sh"
head_commit="$(git -C "$repo" rev-parse HEAD)"
tree_changes="$(git -C "$repo" status --porcelain --untracked-files=no)"

log "building $IMAGE on $BASE_IMAGE with docker/build.sh"
DOCKER_BUILD_ARGS="$build_args" bash "$here/build.sh"
remove_earlier_test_images
[ "$(docker image inspect --format '{{.Config.User}}' "$IMAGE")" = "1000:1000" ]

log "checking the image's provenance: labels and the installed package"
check_label org.opencontainers.image.version "$PACKAGE_VERSION"
check_label org.opencontainers.image.revision "$head_commit"
installed="$(docker run --rm --entrypoint python "$IMAGE" -c \
    'import image_classifier, image_classifier._version as v; print(image_classifier.__version__, v.commit_id)')"
[ "$installed" = "$PACKAGE_VERSION $head_commit" ] \
    || { echo "error: the image's package is '$installed', expected '$PACKAGE_VERSION $head_commit'" >&2; exit 1; }
log "training in a container, as .github/workflows/training.yaml does"
run="$WORK/run"
mkdir -p "$run/data" "$run/experiments"
"$PYTHON" -m image_classifier.data.synthetic --output "$run/data/sample_dataset" --train_size 500 --test_size 100
# CI runs as root; train as GitHub's runner user (uid 1001), which owns the workspace there.
run_as="$(id -u):$(id -g)"
if [ "$(id -u)" -eq 0 ]; then
    run_as="1001:1001"
    chown 1001:1001 "$run/experiments"
fi
password="docker-test-secret-$RANDOM"
output="$(cd "$run" && DB_PASSWORD="$password" RUN_AS="$run_as" bash "$here/run_training.sh" \
    --experiment_name docker_test --run_name run_1 --dataset_folder /data/sample_dataset --num_epochs 1 2>&1)" \
    || { echo "$output" >&2; exit 1; }
echo "$output" | tail -3

log "checking the outputs on the host"
run_dir="$run/experiments/docker_test/run_1"
for name in model.pth metrics.png metrics.json run.json; do
    [ -s "$run_dir/$name" ] || { echo "error: $run_dir/$name is missing" >&2; exit 1; }
    [ "$(stat -c '%u:%g' "$run_dir/$name")" = "$run_as" ] || { echo "error: $name is not owned by $run_as" >&2; exit 1; }
done
if grep -rq "$password" "$run_dir" || grep -q "$password" <<<"$output"; then
    echo "error: the password leaked into the outputs or the log" >&2
    exit 1
fi
if docker history --no-trunc "$IMAGE" | grep -q "$password"; then
    echo "error: the password is in the image's layers" >&2
    exit 1
fi
"$PYTHON" - "$run_dir" "$PACKAGE_VERSION" "$head_commit" "$tree_changes" <<'PY'
import json, sys
from pathlib import Path
run_dir, version, head_commit, tree_changes = Path(sys.argv[1]), *sys.argv[2:]
metrics = json.loads((run_dir / "metrics.json").read_text())
manifest = json.loads((run_dir / "run.json").read_text())
assert manifest["status"] == "completed" and manifest["device"] == "cpu", manifest
assert len(metrics["class_accuracy"]) == 10 and len(metrics["history"]) == 1, metrics
assert "requirements-prod.txt" in (manifest["lock_files"] or {}), manifest["lock_files"]  # installed from the lock
# The run names the code it ran: the package version and the commit the image was built from.
assert manifest["versions"]["image_classifier"] == version, (manifest["versions"], version)
code = manifest["code"]
if tree_changes:
    print("note: the tree has uncommitted changes, so no commit describes the code: code.commit not compared")
else:
    assert code["commit"] == head_commit, (code, head_commit)
print(f"container run: test accuracy {metrics['test_accuracy']:.1f} %, python {manifest['versions']['python']}, "
      f"code {version} ({code['commit']})")
PY
log "checking that the same image serves the run's predictions"
bash "$here/check_serving.sh" "$IMAGE" "$run_dir"
log "docker test passed: $IMAGE"
