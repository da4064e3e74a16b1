#!/usr/bin/env bash
# Make sure a Docker engine answers `docker info`, installing and starting one if needed.
#
#   scripts/ensure-docker.sh                 # engine only
#   scripts/ensure-docker.sh --gpu-standin   # tests only: engine with the stand-in NVIDIA hook
#
# Idempotent and quiet when there is nothing to do. A dockerd started here runs detached
# (survives the calling shell/make), logs to /var/log/trainyard-dockerd.log and is recorded in
# /run/trainyard/dockerd.pid. It always runs with --bridge=none (containers use network "none").
#
# --gpu-standin: on a host without a real NVIDIA runtime, (re)start the dockerd this script
# manages with tests/gpu-standin on its PATH, so docker registers its NVIDIA device driver and
# `--gpus` / DeviceRequests work for real (the container gets NVIDIA_VISIBLE_DEVICES). Never use
# it on hosts users run jobs on. A dockerd started by someone else is left alone (warning).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUN_DIR=/run/trainyard
PIDFILE="$RUN_DIR/dockerd.pid"
STANDIN_FILE="$RUN_DIR/dockerd.standin"           # pid of our dockerd that has the stand-in
VERIFIED_FILE="$RUN_DIR/dockerd.standin.verified" # pid whose GPU path was checked with a container
DOCKERD_LOG=/var/log/trainyard-dockerd.log
DOCKERD_ARGS=(--bridge=none --iptables=false --ip6tables=false)
STANDIN_DIR="$TRAINYARD_ROOT/tests/gpu-standin"
HOOK=nvidia-container-runtime-hook
START_TIMEOUT="${TRAINYARD_DOCKERD_TIMEOUT:-60}"

usage() {
    sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

want_standin=0
for arg in "$@"; do
    case "$arg" in
        --gpu-standin) want_standin=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage >&2
            ty_die "unknown argument: $arg"
            ;;
    esac
done

if [[ "$want_standin" -eq 1 ]] && { command -v "$HOOK" || command -v nvidia-smi; } >/dev/null 2>&1; then
    want_standin=0 # a real NVIDIA runtime is installed: it must be used, not the stand-in
fi

docker_ok() { timeout 20 docker info >/dev/null 2>&1; }

# our_pid: print the pid of the running dockerd this script started, if any.
our_pid() {
    local pid
    [[ -f "$PIDFILE" ]] || return 1
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    ty_pid_alive "$pid" dockerd || return 1
    printf '%s\n' "$pid"
}

# running_dockerd_pid: pid of whatever dockerd owns /var/run/docker.pid, if alive.
running_dockerd_pid() {
    local pid
    pid="$(cat /var/run/docker.pid 2>/dev/null || true)"
    ty_pid_alive "$pid" dockerd || return 1
    printf '%s\n' "$pid"
}

# has_hook_on_path PID: true when that process's PATH has an executable nvidia hook.
has_hook_on_path() {
    local pid="$1" path dir dirs
    path="$(tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | sed -n 's/^PATH=//p' | head -n 1)"
    [[ -n "$path" ]] || return 1
    IFS=: read -ra dirs <<<"$path"
    for dir in "${dirs[@]}"; do
        [[ -n "$dir" && -x "$dir/$HOOK" ]] && return 0
    done
    return 1
}

# local_image: print one locally available image reference (for the GPU check), if any.
local_image() {
    local img
    for img in "${TRAINYARD_TRAIN_IMAGE:-trainyard/train:latest}" \
        "${TRAINYARD_BASE_IMAGE:-trainyard/base:bookworm}"; do
        if docker image inspect "$img" >/dev/null 2>&1; then
            printf '%s\n' "$img"
            return 0
        fi
    done
    docker image ls --format '{{.Repository}}:{{.Tag}}' 2>/dev/null | grep -v '<none>' | head -n 1
}

stop_our_dockerd() {
    local pid="$1" reason="$2" i
    ty_log "stopping dockerd (pid $pid): $reason"
    kill -TERM "$pid" 2>/dev/null || true
    kill -CONT "$pid" 2>/dev/null || true
    for ((i = 0; i < 30 * 5; i++)); do
        ty_pid_alive "$pid" || break
        sleep 0.2
    done
    if ty_pid_alive "$pid"; then
        ty_warn "dockerd (pid $pid) ignored SIGTERM for 30 s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 10 * 5; i++)); do
            ty_pid_alive "$pid" || break
            sleep 0.2
        done
        ty_pid_alive "$pid" && ty_die "dockerd (pid $pid) could not be stopped; see $DOCKERD_LOG"
    fi
    rm -f "$PIDFILE" "$STANDIN_FILE" "$VERIFIED_FILE"
}

start_dockerd() {
    local standin="$1" path="$PATH" pid i
    ty_require_root "starting dockerd"
    if ! command -v dockerd >/dev/null 2>&1; then
        ty_apt_install docker.io
        command -v dockerd >/dev/null 2>&1 || ty_die "docker.io installed but dockerd not found"
    fi

    # A dockerd that died uncleanly leaves pidfiles behind: its own, and that of its containerd,
    # which dockerd would wait for in vain if that pid is a not-yet-reaped zombie.
    local stale pidfile
    for pidfile in /var/run/docker.pid /var/run/docker/containerd/containerd.pid; do
        stale="$(cat "$pidfile" 2>/dev/null || true)"
        if [[ -n "$stale" ]] && ! ty_pid_alive "$stale"; then
            rm -f "$pidfile"
        fi
    done
    if pid="$(running_dockerd_pid)"; then
        ty_die "a dockerd (pid $pid) is running but 'docker info' fails; see its log or stop it"
    fi

    if [[ "$standin" -eq 1 ]]; then
        [[ -x "$STANDIN_DIR/$HOOK" ]] || ty_die "missing executable $STANDIN_DIR/$HOOK"
        path="$STANDIN_DIR:$PATH"
    fi

    mkdir -p "$RUN_DIR" "$(dirname "$DOCKERD_LOG")"
    rm -f "$PIDFILE" "$STANDIN_FILE" "$VERIFIED_FILE"
    printf '\n=== %s: starting dockerd %s (gpu stand-in: %s)\n' \
        "$(date -Is)" "${DOCKERD_ARGS[*]}" "$standin" >>"$DOCKERD_LOG"
    # setsid + nohup: own session, so it outlives the calling make/shell and its signals.
    PATH="$path" setsid nohup dockerd "${DOCKERD_ARGS[@]}" >>"$DOCKERD_LOG" 2>&1 </dev/null &
    pid=$!
    printf '%s\n' "$pid" >"$PIDFILE"

    for ((i = 0; i < START_TIMEOUT * 5; i++)); do
        if docker_ok; then
            break
        fi
        if ! ty_pid_alive "$pid"; then
            tail -n 20 "$DOCKERD_LOG" >&2 || true
            rm -f "$PIDFILE"
            ty_die "dockerd exited during start-up; see $DOCKERD_LOG"
        fi
        sleep 0.2
    done
    if ! docker_ok; then
        tail -n 20 "$DOCKERD_LOG" >&2 || true
        ty_die "dockerd (pid $pid) not ready after ${START_TIMEOUT} s; see $DOCKERD_LOG"
    fi
    # setsid execs dockerd in place; trust dockerd's own pidfile if it says otherwise.
    local real
    if real="$(running_dockerd_pid)" && [[ "$real" != "$pid" ]]; then
        pid="$real"
        printf '%s\n' "$pid" >"$PIDFILE"
    fi
    if [[ "$standin" -eq 1 ]]; then
        printf '%s\n' "$pid" >"$STANDIN_FILE"
    fi
    ty_log "dockerd ready (pid $pid, log $DOCKERD_LOG)"
}

# verify_standin PID: check the GPU path with a real container, once per dockerd.
verify_standin() {
    local pid="$1" img out
    [[ "$(cat "$VERIFIED_FILE" 2>/dev/null || true)" == "$pid" ]] && return 0
    img="$(local_image || true)"
    [[ -n "$img" ]] || return 0 # no image yet (ensure-images.sh runs next); checked next time
    # shellcheck disable=SC2016  # $NVIDIA_VISIBLE_DEVICES is expanded in the container
    if ! out="$(docker run --rm --network none --gpus '"device=1,2"' "$img" \
        sh -c 'echo $NVIDIA_VISIBLE_DEVICES' 2>&1)"; then
        ty_die "GPU stand-in check failed with image $img: $out"
    fi
    [[ "$out" == "1,2" ]] || ty_die "GPU stand-in check: expected NVIDIA_VISIBLE_DEVICES=1,2, got '$out'"
    mkdir -p "$RUN_DIR"
    printf '%s\n' "$pid" >"$VERIFIED_FILE"
}

if docker_ok; then
    [[ "$want_standin" -eq 1 ]] || exit 0
    if pid="$(our_pid)"; then
        if [[ "$(cat "$STANDIN_FILE" 2>/dev/null || true)" == "$pid" ]] && has_hook_on_path "$pid"; then
            verify_standin "$pid"
            exit 0
        fi
        stop_our_dockerd "$pid" "restarting it with the GPU stand-in"
        start_dockerd 1
        verify_standin "$(our_pid)"
        exit 0
    fi
    # Someone else's engine (systemd, another user, a remote DOCKER_HOST): do not touch it.
    if pid="$(running_dockerd_pid)" && has_hook_on_path "$pid"; then
        exit 0
    fi
    ty_warn "Docker engine not started by $TY_PROG and without an NVIDIA hook on its PATH;" \
        "tests that request GPUs may fail (stop it and rerun to get the stand-in)"
    exit 0
fi

if [[ -n "${DOCKER_HOST:-}" && "$DOCKER_HOST" != "unix:///var/run/docker.sock" ]]; then
    ty_die "DOCKER_HOST=$DOCKER_HOST does not answer; start that engine or unset DOCKER_HOST"
fi

# Our own dockerd may be alive but wedged; restart it rather than start a second one.
if pid="$(our_pid)"; then
    [[ "$(cat "$STANDIN_FILE" 2>/dev/null || true)" == "$pid" ]] && want_standin=1
    stop_our_dockerd "$pid" "running but not answering; restarting it"
fi
start_dockerd "$want_standin"
if [[ "$want_standin" -eq 1 ]]; then
    verify_standin "$(our_pid)"
fi
