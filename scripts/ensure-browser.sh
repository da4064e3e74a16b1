#!/usr/bin/env bash
# Make sure a headless browser exists for the dashboard tests (tests/browser/): Debian's
# chromium at /usr/bin/chromium, driven by Playwright for Python through `executable_path`
# (Playwright's own browser download is never used: it needs a host outside the package
# registries).
#
#   TRAINYARD_CHROMIUM   the browser's path (default /usr/bin/chromium); when set and present,
#                        nothing is installed
#
# Idempotent: does nothing when the browser is there. Installing needs root (apt-get).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CHROMIUM="${TRAINYARD_CHROMIUM:-/usr/bin/chromium}"

case "${1:-}" in
    "") ;;
    -h | --help)
        sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) ty_die "unknown argument: $1 (see --help)" ;;
esac

if [[ -x "$CHROMIUM" ]]; then
    exit 0
fi
[[ "$CHROMIUM" == /usr/bin/chromium ]] ||
    ty_die "TRAINYARD_CHROMIUM=$CHROMIUM is not an executable file"

start=$SECONDS
# Recommends would pull in fonts, desktop integration and more: a headless run needs none.
ty_apt_install --no-install-recommends chromium
[[ -x "$CHROMIUM" ]] || ty_die "apt-get installed chromium but $CHROMIUM is missing"
ty_log "installed $("$CHROMIUM" --version 2>/dev/null || echo chromium) in $((SECONDS - start)) s"
