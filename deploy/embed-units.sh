#!/usr/bin/env bash
# Copies systemd/envoy.service, systemd/service-proxy-agent.service and deploy/logrotate/envoy
# into the startup script (between its "BEGIN EMBEDDED UNITS" and "END EMBEDDED UNITS" lines):
# the instance template carries one file, so the units travel inside it. Run it after editing
# one of them.
# `--check` changes nothing and exits 1 when the embedded copies are stale.
set -euo pipefail
cd "$(dirname "$0")/.."
script=deploy/startup-script.sh

embed() { # FUNCTION-NAME UNIT-FILE
  if grep -qx 'UNIT' "$2"; then
    echo "$2 contains a line 'UNIT', the here-document's end marker" >&2
    exit 1
  fi
  printf '%s() {\n  cat <<'"'"'UNIT'"'"'\n' "$1"
  cat -- "$2"
  printf 'UNIT\n}\n'
}

new=$(mktemp)
trap 'rm -f -- "$new"' EXIT
{
  sed -n '1,/^# BEGIN EMBEDDED UNITS/p' "$script"
  embed unit_envoy systemd/envoy.service
  echo
  embed unit_service_proxy_agent systemd/service-proxy-agent.service
  echo
  embed logrotate_envoy deploy/logrotate/envoy
  sed -n '/^# END EMBEDDED UNITS/,$p' "$script"
} >"$new"

if cmp -s -- "$new" "$script"; then
  echo "$script: embedded units are up to date"
  exit 0
fi
if [ "${1:-}" = --check ]; then
  echo "$script: embedded units differ from systemd/*.service; run deploy/embed-units.sh" >&2
  exit 1
fi
cat -- "$new" >"$script"
echo "$script: embedded units updated"
