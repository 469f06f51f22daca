#!/usr/bin/env bash
# The Debian tools some tests use, when missing and apt-get can install them:
# docker-compose (checks deploy/compose.yaml with `docker-compose config`, no daemon needed).
# Best effort: a test whose tool is still missing skips and says why.
set -uo pipefail
command -v docker-compose >/dev/null && exit 0
command -v apt-get >/dev/null || exit 0
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null && sudo -n true 2>/dev/null || exit 0
  SUDO="sudo -n"
fi
echo "test-deps: installing docker-compose"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null 2>&1 \
  || { $SUDO apt-get update -qq >/dev/null 2>&1 \
       && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null 2>&1; } \
  || echo "test-deps: docker-compose could not be installed; its test will skip" >&2
exit 0
