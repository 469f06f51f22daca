#!/usr/bin/env bash
# Installs the Debian packages rtclake builds against, when they are missing:
# libsimdjson-dev (the JSON Lines parser, src/rtclake/_jsoncols.cpp).
set -euo pipefail
if [ -f /usr/include/simdjson.h ]; then exit 0; fi
if ! command -v apt-get >/dev/null; then
  echo "system-deps: simdjson's headers are missing; install libsimdjson-dev (Debian/Ubuntu)" >&2
  exit 1
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
echo "system-deps: installing libsimdjson-dev"
$SUDO apt-get update -qq || true
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libsimdjson-dev
