#!/usr/bin/env bash
# Make sure Prometheus and promtool exist for the metrics tests (tests/e2e/test_prometheus_server.py
# starts its own Prometheus on 127.0.0.1; tests/integration/test_prometheus_metrics.py runs
# `promtool check metrics`): Debian's `prometheus` package.
#
#   TRAINYARD_PROMETHEUS   the server's path (default: `prometheus` on PATH)
#   TRAINYARD_PROMTOOL     promtool's path (default: `promtool` on PATH)
#
# Idempotent: does nothing when both are there. Installing needs root (apt-get). The package's
# own service is not wanted (it would listen on every interface): where the install started
# it, it is stopped and disabled again.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PROMETHEUS="${TRAINYARD_PROMETHEUS:-prometheus}"
PROMTOOL="${TRAINYARD_PROMTOOL:-promtool}"

case "${1:-}" in
    "") ;;
    -h | --help)
        sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) ty_die "unknown argument: $1 (see --help)" ;;
esac

if command -v "$PROMETHEUS" >/dev/null 2>&1 && command -v "$PROMTOOL" >/dev/null 2>&1; then
    exit 0
fi
[[ "$PROMETHEUS" == prometheus && "$PROMTOOL" == promtool ]] ||
    ty_die "TRAINYARD_PROMETHEUS=$PROMETHEUS / TRAINYARD_PROMTOOL=$PROMTOOL: not an executable"

start=$SECONDS
# Recommends would add prometheus-node-exporter, another daemon on every interface.
ty_apt_install --no-install-recommends prometheus
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    systemctl disable --now prometheus >/dev/null 2>&1 ||
        ty_warn "could not stop the prometheus service the package started (port 9090)"
fi
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 ||
    ty_die "apt-get installed prometheus but prometheus or promtool is not on PATH"
ty_log "installed $(prometheus --version 2>&1 | head -n 1) in $((SECONDS - start)) s"
