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

# ty_image_label IMAGE LABEL: print the label's value ("" when the image or label is missing).
ty_image_label() {
    docker image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true
}

# ty_sha256: hash of stdin, hex only.
ty_sha256() { sha256sum | cut -d' ' -f1; }

# ty_offline_base IMAGE SUITE PACKAGES: make sure IMAGE is a Debian minbase of SUITE with the
# comma-separated PACKAGES, built with mmdebstrap from the host's own apt sources and
# `docker import`ed (no registry needed). The image carries the label trainyard.base_recipe (hash
# of everything that defines it) and is rebuilt only when that differs.
ty_offline_base() {
    local image="$1" suite="$2" packages="$3" recipe_hash tmp start
    recipe_hash="$(printf '%s' "mmdebstrap minbase $suite $packages nodocs v1" | ty_sha256)"
    [[ "$(ty_image_label "$image" trainyard.base_recipe)" == "$recipe_hash" ]] && return 0

    ty_require_root "building $image with mmdebstrap"
    command -v mmdebstrap >/dev/null 2>&1 || ty_apt_install mmdebstrap
    start=$SECONDS
    tmp="$(mktemp -d /var/tmp/trainyard-base.XXXXXX)"
    ty_log "building base image $image ($packages) offline with mmdebstrap (about a minute)"
    # No mirror argument: mmdebstrap uses the host's own apt sources.
    if ! mmdebstrap --variant=minbase --include="$packages" \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        "$suite" "$tmp/base.tar" >"$tmp/mmdebstrap.log" 2>&1; then
        tail -n 30 "$tmp/mmdebstrap.log" >&2
        rm -rf "$tmp"
        ty_die "mmdebstrap failed (output above)"
    fi
    if ! docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change "LABEL trainyard.base_recipe=$recipe_hash" \
        --change 'CMD ["python3"]' \
        "$tmp/base.tar" "$image" >/dev/null; then
        rm -rf "$tmp"
        ty_die "docker import of $tmp/base.tar as $image failed"
    fi
    rm -rf "$tmp"
    ty_log "built $image in $((SECONDS - start)) s"
}
