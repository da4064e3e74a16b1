# shellcheck shell=bash
# Shared helpers for scripts/ensure-*.sh. Source it; do not run it.

# Repository root, resolved from this file's location (works from any cwd).
TRAINYARD_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export TRAINYARD_ROOT

# Name of the calling script, for messages.
TY_PROG="$(basename "$0")"

ty_log() { printf '%s: %s\n' "$TY_PROG" "$*" >&2; }
ty_warn() { printf '%s: warning: %s\n' "$TY_PROG" "$*" >&2; }
ty_die() {
    printf '%s: error: %s\n' "$TY_PROG" "$*" >&2
    exit 1
}

# ty_require_root: apt-get, dockerd and mmdebstrap all need root.
ty_require_root() {
    [[ "$(id -u)" -eq 0 ]] || ty_die "must run as root (needed for: $*)"
}

# ty_apt_install PKG...: install Debian packages non-interactively.
# Waits (bounded) for another apt/dpkg run holding the lock instead of failing on it.
ty_apt_install() {
    ty_require_root "apt-get install $*"
    command -v apt-get >/dev/null 2>&1 || ty_die "apt-get not found: install $* by hand"
    local apt_log
    apt_log="$(mktemp /tmp/trainyard-apt.XXXXXX.log)"
    ty_log "installing $* with apt-get (log: $apt_log)"
    if ! apt-get -o DPkg::Lock::Timeout=600 update >"$apt_log" 2>&1; then
        tail -n 20 "$apt_log" >&2
        ty_die "apt-get update failed (log: $apt_log)"
    fi
    if ! DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y "$@" >>"$apt_log" 2>&1; then
        tail -n 20 "$apt_log" >&2
        ty_die "apt-get install $* failed (log: $apt_log)"
    fi
    rm -f "$apt_log"
}

# ty_pid_alive PID [COMM]: true when PID is a live process (optionally with that command name).
# Zombies count as dead: a detached daemon's parent (pid 1) may be slow to reap it.
ty_pid_alive() {
    local pid="$1" comm="${2:-}" state
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    state="$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)"
    [[ -n "$state" && "$state" != Z && "$state" != X ]] || return 1
    if [[ -n "$comm" ]]; then
        [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$comm" ]] || return 1
    fi
    return 0
}
