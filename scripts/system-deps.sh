#!/usr/bin/env bash
# Debian packages the tests use: a real redis-server, a headless chromium, haproxy (its config
# check, `haproxy -c`, validates docker/haproxy.cfg) and prometheus (its promtool checks and
# unit-tests deploy/monitoring's alert rules). docker/build-and-smoke.sh installs its own
# (podman, runc, mmdebstrap, uidmap).
set -euo pipefail
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v promtool >/dev/null || missing+=(prometheus) # promtool checks deploy/monitoring's rules
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2
    exit 1
  fi
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
