#!/usr/bin/env bash
# Installs promtool (Prometheus 2.42, Debian bookworm's build) into /usr/local/bin for the rule tests.
#
# Only the binary: Debian's `prometheus` package with its dependencies takes 316 MB on disk (218 MB of
# it libjs-moment-timezone, for the web UI) and ships an init script that would start a Prometheus
# server where policy-rc.d does not forbid it. Here apt downloads the same .deb (19 MB) and promtool
# (48 MB) is copied out of it: no dependency, no daemon, no user. Needs root (or PREFIX set).
set -euo pipefail
PREFIX="${PREFIX:-/usr/local/bin}"
if command -v promtool >/dev/null; then
    echo "promtool already installed: $(command -v promtool)"
    exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
# apt's sandbox user cannot write a fresh temporary folder: let it, or the download warns.
chmod 755 "$work"
if ! apt-get download -qq prometheus 2>/dev/null; then
    apt-get update -qq
    apt-get download -qq prometheus
fi
dpkg-deb -x prometheus_*.deb root
install -m 755 root/usr/bin/promtool "$PREFIX/promtool"
"$PREFIX/promtool" --version | head -n 1
