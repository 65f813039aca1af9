#!/usr/bin/env bash
# Stand-ins for systemctl, useradd and getent while tests/startup_script.rs runs the startup
# script in a temporary root (called through symlinks of those names). Every call is appended
# to $STUB_LOG as "<name> <args>".
#
# systemctl start|restart envoy.service runs the real Envoy the script installed
# ($SPA_ROOT/usr/local/bin/envoy) with the bootstrap the script wrote, minus its two parts that
# talk to Google (ADS to trafficdirector.googleapis.com, the Cloud Trace exporter): tests reach
# nothing but loopback. So the script's LIVE wait polls a real Envoy's admin, on the admin
# address the bootstrap got. STUB_ENVOY=none leaves Envoy stopped (never LIVE).
# useradd records the user in $STUB_STATE/passwd, where getent looks.
set -euo pipefail
name=$(basename "$0")
state=${STUB_STATE:?}
printf '%s %s\n' "$name" "$*" >>"${STUB_LOG:?}"

pidfile=$state/envoy.pid

envoy_running() {
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

stop_envoy() {
  if envoy_running; then
    kill "$(cat "$pidfile")"
    for _ in $(seq 100); do
      envoy_running || break
      sleep 0.1
    done
  fi
  rm -f "$pidfile"
}

start_envoy() {
  if envoy_running || [ "${STUB_ENVOY:-run}" = none ]; then
    return 0
  fi
  local root=${SPA_ROOT:?}
  jq 'del(.dynamic_resources, .tracing)' "$root/etc/envoy/bootstrap.json" >"$state/envoy-local.json"
  (
    # Envoy outlives this call, as under systemd: it must hold none of the caller's
    # descriptors (the test waits for the script's output pipes to close).
    for fd in /proc/self/fd/*; do
      fd=${fd##*/}
      if [ "$fd" -gt 2 ]; then
        eval "exec $fd>&-" 2>/dev/null || true
      fi
    done
    exec setsid "$root/usr/local/bin/envoy" -c "$state/envoy-local.json" \
      --disable-hot-restart --concurrency 1 --log-path "$state/envoy.log" \
      </dev/null >/dev/null 2>&1
  ) &
  echo $! >"$pidfile"
}

case $name in
  systemctl)
    verb=${1:-}
    shift || true
    for unit in "$@"; do
      if [ "$unit" = envoy.service ]; then
        case $verb in
          start) start_envoy ;;
          restart)
            stop_envoy
            start_envoy
            ;;
          stop) stop_envoy ;;
        esac
      fi
    done
    ;;
  useradd)
    user=${*: -1}
    printf '%s:x:990:990::/nonexistent:/usr/sbin/nologin\n' "$user" >>"$state/passwd"
    ;;
  getent)
    [ "${1:-}" = passwd ] || exit 2
    grep -q "^${2:-}:" "$state/passwd" 2>/dev/null || exit 2
    grep "^${2:-}:" "$state/passwd"
    ;;
  *)
    echo "startup-stubs.sh: unknown name $name" >&2
    exit 1
    ;;
esac
