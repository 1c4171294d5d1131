#!/usr/bin/env bash
# The image-folder path end to end, as a user takes it (`make demo-folder` runs it):
#     bash scripts/demo_folder.sh BIN_DIR IMAGES EXPERIMENTS RUN
# Trains on IMAGES (train/<class>/ and test/<class>/ folders of image files) into EXPERIMENTS/demo-folder/RUN,
# registers the run as version N of the model "demo-folder" with the alias "production", classifies three
# test images with image_classifier_predict, then serves models:/demo-folder@production over HTTP on a free
# port, posts one image to /predict and stops the service (also when a step fails).
set -euo pipefail

usage="usage: demo_folder.sh BIN_DIR IMAGES EXPERIMENTS RUN"
bin="${1:?$usage}"
images="${2:?$usage}"
experiments="${3:?$usage}"
run="${4:?$usage}"
READY_TIMEOUT_S="${READY_TIMEOUT_S:-180}"
model="models:/demo-folder@production"

log() { printf '\n== %s\n' "$*" >&2; }

log "train on the image folder $images"
"$bin/image_classifier_trainer" --experiment_name demo-folder --run_name "$run" --dataset_folder "$images" \
    --experiments_folder "$experiments" --augment --batch_size 32 --learning_rate 0.01 --num_epochs 6

log "register the run as the next version of demo-folder, alias production"
"$bin/image_classifier_runs" register "demo-folder/$run" --name demo-folder --alias production \
    --experiments_folder "$experiments"

samples=()
for class_folder in "$images"/test/*/; do
    first=("$class_folder"*)
    samples+=("${first[0]}")
    [ "${#samples[@]}" -lt 3 ] || break
done
log "classify ${samples[*]} with image_classifier_predict"
"$bin/image_classifier_predict" --model "$model" --experiments_folder "$experiments" "${samples[@]}"

port="$("$bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
url="http://127.0.0.1:$port"
log "serve $model on $url"
"$bin/image_classifier_serve" --model "$model" --experiments_folder "$experiments" --port "$port" &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq "$READY_TIMEOUT_S"); do
    curl -fsS "$url/ready" >/dev/null 2>&1 && break
    kill -0 "$server" 2>/dev/null || { echo "error: the service stopped" >&2; exit 1; }
    sleep 1
done
log "POST ${samples[0]} to $url/predict"
curl -fsS -F "file=@${samples[0]}" "$url/predict?top_k=2"
echo
kill -TERM "$server"
wait "$server" || true
trap - EXIT
log "done: the run is $experiments/demo-folder/$run, the model $model"
