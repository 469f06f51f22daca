#!/usr/bin/env bash
# The Debian tools some tests use, when missing and apt-get can install them:
# docker-compose (checks deploy/compose.yaml with `docker-compose config`, no daemon needed);
# chromium (the dashboard's browser tests drive it with Playwright; no browser download);
# influxdb (InfluxDB 1.6: the influxdb sink's tests start their own influxd on free ports).
# Best effort: a test whose tool is still missing skips and says why.
set -uo pipefail
missing=()
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v chromium >/dev/null || missing+=(chromium)
command -v influxd >/dev/null || missing+=(influxdb)
[ ${#missing[@]} -eq 0 ] && exit 0
command -v apt-get >/dev/null || exit 0
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null && sudo -n true 2>/dev/null || exit 0
  SUDO="sudo -n"
fi
install() {
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null 2>&1
}
updated=""
for package in "${missing[@]}"; do
  echo "test-deps: installing $package"
  install "$package" \
    || { [ -z "$updated" ] && updated=1 && $SUDO apt-get update -qq >/dev/null 2>&1 && install "$package"; } \
    || echo "test-deps: $package could not be installed; its tests will skip" >&2
done
exit 0
