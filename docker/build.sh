#!/usr/bin/env bash
# Build the training image: configure, create the build context, docker build, and always clean up.
# Works executed or sourced, from any directory. Extra `docker build` options: DOCKER_BUILD_ARGS. The wheel is
# built by $PYTHON (default: .venv/bin/python, else python3; it needs requirements/requirements-build.txt).
#     bash docker/build.sh        BASE_IMAGE=my-base:tag bash docker/build.sh        make docker-build

_image_classifier_docker_build() (
    set -euo pipefail
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    source "$here/configure.sh"
    trap 'bash "$here/cleanup_build_context.sh"' EXIT
    bash "$here/create_build_context.sh"
    # The OCI labels name the version and commit the image was built from (docker image inspect shows them).
    # shellcheck disable=SC2086  # DOCKER_BUILD_ARGS is a list of options
    DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-0}" docker build \
        --build-arg BASE_IMAGE="$BASE_IMAGE" \
        --build-arg PACKAGE_VERSION="$PACKAGE_VERSION" \
        --build-arg SOURCE_COMMIT="$SOURCE_COMMIT" \
        --build-arg IMAGE_SOURCE="$IMAGE_SOURCE" \
        ${DOCKER_BUILD_ARGS:-} \
        --tag "$IMAGE" \
        "$here"
    echo "built $IMAGE"
)
_image_classifier_docker_build "$@"
