#!/usr/bin/env bash
# Make sure the training image exists and matches images/training/ (no registry needed).
#
#   TRAINYARD_BASE_IMAGE   base image (default trainyard/base:bookworm, built offline with
#                          mmdebstrap from the host's apt sources; any other value, e.g.
#                          python:3.11-slim, is used as is and may be pulled by docker build)
#   TRAINYARD_TRAIN_IMAGE  tag of the training image (default trainyard/train:latest)
#
# Idempotent and fast when nothing changed: the training image carries the label
# trainyard.src_hash (hash of images/training/ plus the base image id) and is rebuilt only when
# that differs. Needs a running engine (scripts/ensure-docker.sh).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DEFAULT_BASE=trainyard/base:bookworm
BASE_IMAGE="${TRAINYARD_BASE_IMAGE:-$DEFAULT_BASE}"
TRAIN_IMAGE="${TRAINYARD_TRAIN_IMAGE:-trainyard/train:latest}"
CONTEXT="$TRAINYARD_ROOT/images/training"
SUITE=bookworm
BASE_PACKAGES=python3,python3-numpy

case "${1:-}" in
    "") ;;
    -h | --help)
        sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) ty_die "unknown argument: $1 (see --help)" ;;
esac

docker info >/dev/null 2>&1 || ty_die "Docker engine not reachable; run scripts/ensure-docker.sh first"
[[ -f "$CONTEXT/Dockerfile" ]] || ty_die "missing $CONTEXT/Dockerfile"

if [[ "$BASE_IMAGE" == "$DEFAULT_BASE" ]]; then
    ty_offline_base "$BASE_IMAGE" "$SUITE" "$BASE_PACKAGES"
fi

# The base id pins the hash to the exact base; a custom base not present yet is pulled by the
# build, and the next run then rebuilds once with its id (cheap: layers are cached).
base_id="$(docker image inspect --format '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || echo absent)"
src_hash="$(
    cd "$CONTEXT"
    {
        printf 'base %s %s\n' "$BASE_IMAGE" "$base_id"
        find . -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | LC_ALL=C sort -z |
            xargs -0 sha256sum
    } | ty_sha256
)"

if [[ "$(ty_image_label "$TRAIN_IMAGE" trainyard.src_hash)" == "$src_hash" ]]; then
    exit 0
fi

start=$SECONDS
build_log="$(mktemp /tmp/trainyard-build.XXXXXX.log)"
ty_log "building $TRAIN_IMAGE from images/training (base $BASE_IMAGE)"
# The classic builder ships with the docker CLI; BuildKit would need the buildx plugin.
if ! DOCKER_BUILDKIT=0 docker build --force-rm \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --label "trainyard.src_hash=$src_hash" \
    -t "$TRAIN_IMAGE" "$CONTEXT" >"$build_log" 2>&1; then
    tail -n 30 "$build_log" >&2
    ty_die "docker build of $TRAIN_IMAGE failed (full log: $build_log)"
fi
rm -f "$build_log"
# Drop the previous build's now-untagged image, if nothing else uses it.
docker image prune --force --filter "label=trainyard.src_hash" >/dev/null 2>&1 || true
ty_log "built $TRAIN_IMAGE in $((SECONDS - start)) s"
