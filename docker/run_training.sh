#!/usr/bin/env bash
# Train in the container as the training workflow does; the arguments go to image_classifier_trainer.
#     DB_PASSWORD=... bash docker/run_training.sh --experiment_name e --run_name r --dataset_folder /data/cifar_dataset
# DATA_DIR (default: data) is mounted read-only at /data, EXPERIMENTS_DIR (default: experiments) at
# /experiments. The container runs as RUN_AS (default: the invoking user's uid:gid), so the outputs belong
# to that user. The password travels as an environment variable, never on a command line.
# MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, when set and not empty, are
# passed on the same way, so the trainer also logs the run to that MLflow server.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/configure.sh"

: "${DB_PASSWORD:?set DB_PASSWORD (the database password)}"
data_dir="$(cd "${DATA_DIR:-data}" && pwd)"
experiments_dir="${EXPERIMENTS_DIR:-experiments}"
mkdir -p "$experiments_dir"
experiments_dir="$(cd "$experiments_dir" && pwd)"

tracking_env=()
for name in MLFLOW_TRACKING_URI MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD; do
    if [ -n "${!name:-}" ]; then
        tracking_env+=(--env "$name")  # the name only: docker reads the value from this environment
    fi
done

docker run --rm \
    --user "${RUN_AS:-$(id -u):$(id -g)}" \
    --env DB_PASSWORD \
    ${tracking_env[@]+"${tracking_env[@]}"} \
    --volume "$data_dir:/data:ro" \
    --volume "$experiments_dir:/experiments" \
    "$IMAGE" "$@"
