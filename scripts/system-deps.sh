#!/usr/bin/env bash
# Debian packages the tests use: a real redis-server, a headless chromium, haproxy (its config
# check, `haproxy -c`, validates docker/haproxy.cfg) and prometheus (its promtool checks and
# unit-tests deploy/monitoring's alert rules). docker/build-and-smoke.sh installs its own
# (podman, runc, mmdebstrap, uidmap).
#
# Installs only the packages dpkg does not list as installed, without their recommended extras,
# and upgrades nothing that is installed: if a missing package needs a newer version of an
# installed one, it lists those upgrades and stops; `--allow-upgrades` accepts them
# (`make test SYSTEM_DEPS=--allow-upgrades`).
set -euo pipefail
allow_upgrades=false
case "${1:-}" in
  "") ;;
  --allow-upgrades) allow_upgrades=true ;;
  *) echo "usage: $0 [--allow-upgrades]" >&2; exit 2 ;;
esac

missing=()
for package in redis-server chromium haproxy prometheus; do
  status=$(dpkg-query --show --showformat='${db:Status-Status}' "$package" 2>/dev/null || true)
  [ "$status" = installed ] || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

install=(apt-get install -y -q --no-install-recommends --no-upgrade "${missing[@]}")
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${missing[*]}; install them as root: ${install[*]}" >&2
  exit 1
fi
apt-get update -q
# "Inst NAME [INSTALLED] (NEW ...)": an installed package that would be upgraded
upgrades=$(DEBIAN_FRONTEND=noninteractive "${install[@]}" --simulate |
  sed -n 's/^Inst \([^ ]*\) \[\([^]]*\)\] (\([^ ]*\).*/\1 \2 -> \3/p')
if [ -n "$upgrades" ] && [ "$allow_upgrades" = false ]; then
  {
    echo "installing ${missing[*]} would upgrade installed packages:"
    echo "  ${upgrades//$'\n'/$'\n'  }"
    echo "nothing was installed; to accept: bash $0 --allow-upgrades"
  } >&2
  exit 1
fi
DEBIAN_FRONTEND=noninteractive "${install[@]}"
