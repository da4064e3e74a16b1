#!/usr/bin/env bash
# Make sure the service image (API and agent, ./Dockerfile) exists and matches the sources.
#
#   TRAINYARD_SERVICE_IMAGE       tag of the image (default trainyard/service:latest)
#   TRAINYARD_SERVICE_BASE_IMAGE  base image (default trainyard/base-service:bookworm: Debian
#                                 minbase with python3 + python3-venv, built offline with
#                                 mmdebstrap from the host's apt sources; any other value, e.g.
#                                 python:3.11-slim, is used as is and may be pulled)
#   TRAINYARD_WHEELHOUSE_PIP      pip that fills the wheelhouse (default .venv/bin/pip); its
#                                 Python must be the base image's version (3.11 on bookworm)
#
#   --validate-compose            also check docker-compose.yml and docker-compose.hosts.yml with
#                                 `docker-compose config -q` (installs Debian's docker-compose,
#                                 the v1 tool, when missing)
#
# The build needs no network: the dependencies are first turned into wheels on the host, in
# .build/wheelhouse/ (`pip wheel`, from PyPI or PIP_FIND_LINKS; only when pyproject.toml
# changes), and `docker build --network none` installs from there with --no-index.
#
# Idempotent and fast when nothing changed: the image carries the label
# trainyard.service_src_hash (hash of the Dockerfile, .dockerignore, pyproject.toml, run.py,
# agent/, api/, the wheelhouse and the base image id) and is rebuilt only when that differs; the
# layer cache keeps the dependency layer while pyproject.toml is unchanged. Needs a running
# engine (scripts/ensure-docker.sh). Prints nothing when the image is current.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DEFAULT_BASE=trainyard/base-service:bookworm
BASE_IMAGE="${TRAINYARD_SERVICE_BASE_IMAGE:-$DEFAULT_BASE}"
SERVICE_IMAGE="${TRAINYARD_SERVICE_IMAGE:-trainyard/service:latest}"
PIP="${TRAINYARD_WHEELHOUSE_PIP:-$TRAINYARD_ROOT/.venv/bin/pip}"
SUITE=bookworm
BASE_PACKAGES=python3,python3-venv
BUILD_DIR="$TRAINYARD_ROOT/.build"
WHEELHOUSE="$BUILD_DIR/wheelhouse"
LABEL=trainyard.service_src_hash

validate_compose=0
for arg in "$@"; do
    case "$arg" in
        --validate-compose) validate_compose=1 ;;
        -h | --help)
            sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) ty_die "unknown argument: $arg (see --help)" ;;
    esac
done

docker info >/dev/null 2>&1 || ty_die "Docker engine not reachable; run scripts/ensure-docker.sh first"
[[ -f "$TRAINYARD_ROOT/Dockerfile" ]] || ty_die "missing $TRAINYARD_ROOT/Dockerfile"

# One build at a time (two `make test` runs on one host share the wheelhouse and the tag).
mkdir -p "$BUILD_DIR"
exec 9>"$BUILD_DIR/service-image.lock"
flock -w 900 9 || ty_die "another build holds $BUILD_DIR/service-image.lock"

# fill_wheelhouse: wheels of every runtime dependency and of the build backend, made on the host
# (which reaches PyPI) for the image's build (which does not). Skipped while pyproject.toml is
# unchanged; a failure leaves the previous wheelhouse in place.
fill_wheelhouse() {
    local stamp tmp start
    stamp="pyproject-$(ty_sha256 <"$TRAINYARD_ROOT/pyproject.toml" | cut -c1-16)"
    [[ -f "$WHEELHOUSE/.$stamp" ]] && return 0
    [[ -x "$PIP" ]] || ty_die "no pip at $PIP: run 'make venv' or set TRAINYARD_WHEELHOUSE_PIP"
    start=$SECONDS
    tmp="$(mktemp -d "$BUILD_DIR/wheelhouse.XXXXXX")"
    # The requirements come from pyproject.toml itself: no in-tree build of the project here.
    "$(dirname "$PIP")/python" - "$TRAINYARD_ROOT/pyproject.toml" >"$tmp/requirements.txt" <<'PY'
import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)
print("\n".join(project["project"]["dependencies"] + project["build-system"]["requires"]))
print("wheel")
PY
    ty_log "building the wheelhouse in .build/wheelhouse with $PIP"
    if ! "$PIP" wheel --quiet --disable-pip-version-check --wheel-dir "$tmp" \
        -r "$tmp/requirements.txt" >"$tmp/pip.log" 2>&1; then
        tail -n 30 "$tmp/pip.log" >&2
        rm -rf "$tmp"
        ty_die "pip wheel failed (output above)"
    fi
    rm -f "$tmp/pip.log"
    touch "$tmp/.$stamp"
    rm -rf "$WHEELHOUSE"
    mv "$tmp" "$WHEELHOUSE"
    chmod 755 "$WHEELHOUSE"
    ty_log "wheelhouse ready: $(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels in $((SECONDS - start)) s"
}

# check_python_versions: the wheelhouse holds binary wheels for the host pip's Python; the image
# must run the same minor version, or the offline install cannot find matching wheels.
check_python_versions() {
    local host_py base_py
    host_py="$("$(dirname "$PIP")/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    base_py="$(docker run --rm --network none --entrypoint python3 "$BASE_IMAGE" \
        -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo unknown)"
    [[ "$host_py" == "$base_py" ]] || ty_die "the wheelhouse is built with Python $host_py" \
        "($PIP) but $BASE_IMAGE has Python $base_py; set TRAINYARD_WHEELHOUSE_PIP to a pip of" \
        "Python $base_py"
}

# check_compose_files: the deployment files parse and interpolate (required variables get
# placeholder values here). Needs no engine: `config` only reads the files.
check_compose_files() {
    local file out
    command -v docker-compose >/dev/null 2>&1 || ty_apt_install docker-compose
    for file in docker-compose.yml docker-compose.hosts.yml; do
        if ! out="$(cd "$TRAINYARD_ROOT" &&
            TRAINYARD_DB_PASSWORD="${TRAINYARD_DB_PASSWORD:-placeholder}" \
            TRAINYARD_DB_HOST="${TRAINYARD_DB_HOST:-db.example}" \
            TRAINYARD_AGENT_ID="${TRAINYARD_AGENT_ID:-placeholder}" \
            TRAINYARD_AGENT_SECRET="${TRAINYARD_AGENT_SECRET:-placeholder-secret-0123}" \
            TRAINYARD_AGENT_ADDRESS="${TRAINYARD_AGENT_ADDRESS:-10.0.0.2}" \
            docker-compose -f "$file" config -q 2>&1)"; then
            printf '%s\n' "$out" >&2
            ty_die "$file is not a valid compose file (docker-compose config, output above)"
        fi
    done
}

if [[ "$validate_compose" -eq 1 ]]; then
    check_compose_files
fi

if [[ "$BASE_IMAGE" == "$DEFAULT_BASE" ]]; then
    ty_offline_base "$BASE_IMAGE" "$SUITE" "$BASE_PACKAGES"
elif ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    docker pull "$BASE_IMAGE" >/dev/null || ty_die "base image $BASE_IMAGE is missing and cannot be pulled"
fi
fill_wheelhouse

base_id="$(docker image inspect --format '{{.Id}}' "$BASE_IMAGE")"
src_hash="$(
    cd "$TRAINYARD_ROOT"
    {
        printf 'base %s %s\n' "$BASE_IMAGE" "$base_id"
        find Dockerfile .dockerignore pyproject.toml run.py agent api .build/wheelhouse -type f \
            ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    } | ty_sha256
)"

if [[ "$(ty_image_label "$SERVICE_IMAGE" "$LABEL")" == "$src_hash" ]]; then
    exit 0
fi

check_python_versions
start=$SECONDS
build_log="$(mktemp /tmp/trainyard-service-build.XXXXXX.log)"
ty_log "building $SERVICE_IMAGE from ./Dockerfile (base $BASE_IMAGE, offline wheelhouse)"
# The classic builder ships with the docker CLI; BuildKit would need the buildx plugin.
if ! DOCKER_BUILDKIT=0 docker build --network none --force-rm \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --build-arg WHEELHOUSE_ONLY=1 \
    --label "$LABEL=$src_hash" \
    -t "$SERVICE_IMAGE" -f "$TRAINYARD_ROOT/Dockerfile" "$TRAINYARD_ROOT" >"$build_log" 2>&1; then
    tail -n 30 "$build_log" >&2
    ty_die "docker build of $SERVICE_IMAGE failed (full log: $build_log)"
fi
rm -f "$build_log"
# Drop the previous build's now-untagged image, and the first stages of earlier builds except
# the newest (the layer cache of the next build; shared parent layers stay while in use).
docker image prune --force --filter "label=$LABEL" >/dev/null 2>&1 || true
docker image ls --filter dangling=true --filter label=trainyard.stage=service-wheels \
    --format '{{.CreatedAt}}	{{.ID}}' | LC_ALL=C sort -r | tail -n +2 | cut -f2 |
    xargs -r docker rmi >/dev/null 2>&1 || true
ty_log "built $SERVICE_IMAGE ($(docker image inspect --format '{{.Size}}' "$SERVICE_IMAGE" |
    awk '{printf "%.0f MB", $1 / 1e6}')) in $((SECONDS - start)) s"
