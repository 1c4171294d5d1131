#!/usr/bin/env bash
# Check that the image serves predictions, as a user would run it:
#     bash docker/check_serving.sh IMAGE RUN_DIR
# Starts image_classifier_serve in a container (the image's entrypoint is the trainer, so --entrypoint) with
# RUN_DIR mounted read-only at /model, waits for /ready, posts a 32 x 32 PNG made on the host with curl (raw
# body and multipart), checks the JSON answers against the run's classes and model sha256, checks that the
# service runs as uid 1000 and stops with status 0 on `docker stop` (SIGTERM), and removes the container even
# when a check fails. Needs docker, curl and python3 (standard library only) on the host.
# CHECK_NETWORK=host runs the container on the host's network (on a free port) instead of publishing 8000,
# for engines without bridge networking.
set -euo pipefail

usage="usage: check_serving.sh IMAGE RUN_DIR"
image="${1:?$usage}"
run_dir="$(cd "${2:?$usage}" && pwd)"
PYTHON="${PYTHON:-python3}"
READY_TIMEOUT_S="${READY_TIMEOUT_S:-180}"
name="image-classifier-serving-check-$$"
work="$(mktemp -d)"

log() { printf '== %s\n' "$*" >&2; }
fail() {
    echo "error: $*" >&2
    docker logs "$name" 2>&1 | tail -30 >&2 || true
    exit 1
}
cleanup() {
    docker rm --force "$name" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

log "starting image_classifier_serve in a container of $image"
if [ "${CHECK_NETWORK:-}" = host ]; then
    port="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    docker run --detach --name "$name" --network host --volume "$run_dir:/model:ro" \
        --entrypoint image_classifier_serve "$image" --model /model --host 127.0.0.1 --port "$port" >/dev/null
else
    docker run --detach --name "$name" --publish 127.0.0.1::8000 --volume "$run_dir:/model:ro" \
        --entrypoint image_classifier_serve "$image" --model /model --host 0.0.0.0 --port 8000 >/dev/null
    port="$(docker port "$name" 8000/tcp | head -n 1)"
    port="${port##*:}"
fi
url="http://127.0.0.1:$port"

for _ in $(seq "$READY_TIMEOUT_S"); do
    curl -fsS "$url/ready" >/dev/null 2>&1 && break
    [ "$(docker inspect --format '{{.State.Running}}' "$name")" = true ] || fail "the service container stopped"
    sleep 1
done
curl -fsS "$url/ready" >/dev/null || fail "$url/ready did not answer within $READY_TIMEOUT_S s"
[ "$(docker exec "$name" id -u)" = 1000 ] || fail "the service does not run as uid 1000"

log "posting a 32 x 32 PNG from the host"
# A PNG written with the standard library only: the host needs no Pillow.
"$PYTHON" - "$work/image.png" <<'PY'
import struct, sys, zlib
width = height = 32
rows = b"".join(b"\x00" + bytes((3 * x + 5 * y) % 256 for x in range(width) for _ in range(3)) for y in range(height))
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
with open(sys.argv[1], "wb") as png:
    png.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
              + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
PY
curl -fsS -H 'Content-Type: image/png' --data-binary "@$work/image.png" "$url/predict?top_k=3" >"$work/raw.json" \
    || fail "POST /predict (raw body) failed"
curl -fsS -F "file=@$work/image.png" "$url/predict?top_k=3" >"$work/multipart.json" \
    || fail "POST /predict (multipart) failed"
"$PYTHON" - "$run_dir" "$work/raw.json" "$work/multipart.json" <<'PY' || fail "the predictions are not what the run says"
import json, sys
from pathlib import Path
run_dir = Path(sys.argv[1])
classes = list(json.loads((run_dir / "metrics.json").read_text())["class_accuracy"])
sha256 = json.loads((run_dir / "run.json").read_text())["model_sha256"]
raw, multipart = (json.loads(Path(path).read_text()) for path in sys.argv[2:])
top = raw["predictions"]
assert len(top) == 3 and all(p["class"] == classes[p["label"]] for p in top), top
probabilities = [p["probability"] for p in top]
assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6, probabilities
assert raw["model"]["sha256"] == sha256, raw["model"]
assert multipart["predictions"] == top, (multipart, top)
print(f"container prediction: {top[0]['class']} ({top[0]['probability']:.3f}), model sha256 {sha256[:12]}")
PY

log "stopping the service (SIGTERM)"
docker stop --time 60 "$name" >/dev/null
status="$(docker inspect --format '{{.State.ExitCode}}' "$name")"
[ "$status" = 0 ] || fail "the service exited with status $status after SIGTERM"
log "serving check passed: $image"
