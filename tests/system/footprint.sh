#!/usr/bin/env bash
# shellcheck disable=SC2016 # awk programs are single-quoted on purpose
# The agent's footprint on the booted image (issue 13): Debian 12 booted under systemd, the
# release installed by the startup script, the agent run by its shipped unit, Envoy holding
# 1,000 service VIPs from the control plane stand-in (the agent in enforce mode keeps one
# rule per VIP). Three runs of FOOTPRINT_DURATION each, after a warm-up, against issue 13's
# targets:
#
#   unit          the unit as shipped (enforce, its malloc environment)  RSS <= 8 MiB, CPU <= 0.05 %
#   no-malloc     the same without the unit's Environment= (enforce)      RSS <= 10 MiB
#   verify        without the malloc environment, --interception=verify  RSS <= 10 MiB
#
# In the tier a missed target is logged and tabled, and the test fails only above the
# ceilings below (a regression); on its own (and from tests/bench.sh) a missed target fails.
#
# RSS is VmRSS of /proc/<pid>/status sampled every second (the largest sample is what is
# compared); CPU is utime+stime of the agent and cutime+cstime of the children it waited for
# (iptables-save), from /proc/<pid>/stat, over the run, as a share of one core. smaps_rollup
# at the end splits the RSS into anonymous memory and file-backed pages (binary, libc).
#
# In the tier (tests/system/run.sh sources this file and calls run_footprint) each run lasts
# 100 s (SPA_FOOTPRINT_DURATION, seconds) on Debian 12 only: about 6.5 minutes for this test
# in all (6 min 9 s measured with 90 s runs). On its own it builds the
# tier's world and runs only this test, with the issue's 10 minutes by default:
#
#   tests/system/footprint.sh                  # 3 x 10 min on Debian 12 (tests/bench.sh --booted-footprint)
#   tests/system/footprint.sh --duration 120   # shorter
#
# The figures of each run are logged and written to $FOOTPRINT_RESULTS (standalone:
# target/bench/footprint-booted.md).

FOOTPRINT_VIPS=1000
FOOTPRINT_WARMUP=15
# The targets, from issue 13.
FOOTPRINT_RSS_UNIT_MIB=8
FOOTPRINT_CPU_UNIT_PCT=0.05
FOOTPRINT_RSS_NO_MALLOC_MIB=10
# The ceilings the tier holds every build to (regressions), above today's figures (README,
# Performance) with room for a busy machine; the targets are checked strictly on request.
# (2026-12-07, 60-120 s runs on a busy 2-core machine: 10.3, 11.8 and 11.2 MiB; CPU 0.24-0.33 %
# until the admin's socket was found with sock_diag instead of /proc/net/tcp, 0.09-0.12 % since,
# 90 s runs. Later that day, 100 s runs at load 4-7: 10.6, 12.1, 11.4 MiB and 0.065-0.087 %;
# then, with the trimmed regex, the listener body parsed only when its bytes change and the
# unit's 256 KiB mmap threshold: 10.1, 10.2, 9.6 MiB and 0.060-0.069 %. The binary's resident
# pages alone vary by 0.4 MiB from one boot to the next. With the identity read once and a
# poll's connections 11 -> 2, two 100 s runs each at load 0.05-1.9: 10.23/9.79, 10.31/10.18,
# 9.45/9.52 MiB and 0.050-0.070 %, against 10.21/10.06, 10.35/10.26, 9.61/9.64 MiB and
# 0.060-0.080 % before: the ceilings stand. With the interception check's answer reused and the
# rules held once and smaller, one 100 s run each at load ~2: 9.53, 9.53, 9.54 MiB and
# 0.050-0.060 %; in a clean-clone .ci/run: 9.21, 11.45 (a 4 MiB untrimmed heap without the
# malloc environment), 9.25 MiB and 0.060-0.070 %: the ceilings stand. 2026-12-08, the binary
# slimmed (regex-lite, no multi-threaded tokio), 602 s runs at load ~1: 7.93, 8.23, 7.97 MiB and
# 0.035-0.038 %, every target met; kept as ceilings, since the margin under the unit (0.07 MiB)
# is below what the binary's resident pages move from boot to boot.)
FOOTPRINT_CEILING_RSS_UNIT_MIB=11
FOOTPRINT_CEILING_RSS_NO_MALLOC_MIB=12
FOOTPRINT_CEILING_CPU_PCT=0.2
FOOTPRINT_DROPIN_DIR=/run/systemd/system/service-proxy-agent.service.d

# footprint_vip I: the I-th extra VIP (10.0.1.0 upwards; the tier's own service is 10.0.0.1).
footprint_vip() {
  local x=$(($1 + 256))
  printf '10.%d.%d.%d' $(((x >> 16) & 255)) $(((x >> 8) & 255)) $((x & 255))
}

# footprint_services add|remove: the control plane serves FOOTPRINT_VIPS VIPs in all (add),
# or only the tier's own again (remove): the 999 extra VIPs in one request (one a line), so
# one listener update (a request each rebuilt the listener 999 times: about 2 minutes).
footprint_services() {
  local i n=$((FOOTPRINT_VIPS - 1))
  for ((i = 0; i < n; i++)); do
    printf '%s:80\n' "$(footprint_vip "$i")"
  done >"$WORK/footprint-services.txt"
  in_world curl --fail --silent --show-error --output /dev/null \
    --data-binary "@$WORK/footprint-services.txt" "http://$XDS_CONTROL/services/$1"
}

footprint_rules() {
  vm iptables-save -t nat | grep -c '^-A SERVICE_PROXY_SERVICE_CIDRS ' || true
}

# footprint_restart: restarts the agent under its unit with the drop-ins in place and waits
# for it to be ready (Type=notify: after its first cycle).
footprint_restart() {
  vm systemctl daemon-reload
  vm systemctl restart "$AGENT_UNIT" || {
    vm systemctl cat "$AGENT_UNIT" >&2 || true
    vm systemctl status --no-pager "$AGENT_UNIT" >&2 || true
    fail "the agent did not restart with the drop-ins above"
  }
  [ "$(unit_state "$AGENT_UNIT")" = active ] || fail "the agent is $(unit_state "$AGENT_UNIT") after a restart"
}

# footprint_measure NAME RSS_TARGET_MIB CPU_TARGET_PCT|- RSS_CEILING_MIB CPU_CEILING_PCT: one
# run; logs its figures and appends a row to FOOTPRINT_RESULTS with the verdict against issue
# 13's target. Fails when a ceiling is passed, or a target missed under FOOTPRINT_STRICT=1
# (tests/bench.sh, and this script run on its own).
footprint_measure() {
  local name=$1 rss_target=$2 cpu_target=$3 rss_ceiling=$4 cpu_ceiling=$5
  local pid
  pid=$(main_pid "$AGENT_UNIT")
  [ "$pid" -gt 0 ] || fail "$AGENT_UNIT has no main process"
  local restarts0
  restarts0=$(vm systemctl show -P NRestarts "$AGENT_UNIT")
  sleep "$FOOTPRINT_WARMUP" # a warm-up after start-up, not a synchronisation
  local tck
  tck=$(vm getconf CLK_TCK)
  # One process in the VM samples: VmRSS every second, /proc/<pid>/stat at both ends, and
  # smaps_rollup and VmHWM at the end. (Sampling from inside the VM's namespaces: the PID
  # is the VM's.)
  local out
  out=$(vm sh -c '
    pid=$1; n=$2
    cpu() { sed "s/.*) //" /proc/$pid/stat | awk "{print \$12 + \$13, \$14 + \$15}"; }
    t0=$(cat /proc/uptime); c0=$(cpu)
    i=0
    while [ "$i" -lt "$n" ]; do
      sleep 1
      [ -r /proc/$pid/status ] || { echo gone; exit 1; }
      awk "/^VmRSS:/ {print \"rss\", \$2}" /proc/$pid/status
      i=$((i + 1))
    done
    t1=$(cat /proc/uptime); c1=$(cpu)
    echo "t ${t0%% *} ${t1%% *}"
    echo "c0 $c0"
    echo "c1 $c1"
    awk "/^VmHWM:/ {print \"hwm\", \$2}" /proc/$pid/status
    awk "/^Rss:/ {print \"smaps_rss\", \$2} /^Anonymous:/ {print \"anon\", \$2}" /proc/$pid/smaps_rollup
  ' footprint "$pid" "$FOOTPRINT_DURATION") || fail "$name: the agent (PID $pid) went away during the run: $out"
  [ "$(main_pid "$AGENT_UNIT")" = "$pid" ] || fail "$name: the agent was restarted during the run"
  [ "$(vm systemctl show -P NRestarts "$AGENT_UNIT")" = "$restarts0" ] || fail "$name: the unit restarted the agent"
  local rules
  rules=$(footprint_rules)
  local fig
  fig=$(printf '%s\n' "$out" | awk -v tck="$tck" -v name="$name" -v rules="$rules" '
    $1 == "rss" { n++; kib = $2; if (kib > max) max = kib; sum += kib; v[n] = kib }
    $1 == "t" { secs = $3 - $2 }
    $1 == "c0" { s0 = $2; k0 = $3 }
    $1 == "c1" { s1 = $2; k1 = $3 }
    $1 == "hwm" { hwm = $2 }
    $1 == "smaps_rss" { srss = $2 }
    $1 == "anon" { anon = $2 }
    END {
      # median of the samples (insertion sort: a few hundred values)
      for (i = 2; i <= n; i++) { x = v[i]; j = i - 1; while (j > 0 && v[j] > x) { v[j + 1] = v[j]; j-- } v[j + 1] = x }
      med = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
      cpu = (s1 - s0) / tck / secs * 100; child = (k1 - k0) / tck / secs * 100
      printf "%s %.0f %.2f %.2f %.2f %.2f %.2f %.2f %.3f %.3f %d %d\n", name, secs, max / 1024, med / 1024, v[1] / 1024, hwm / 1024, anon / 1024, (srss - anon) / 1024, cpu, child, rules, n
    }')
  local secs max med min hwm anon file cpu child samples
  read -r _ secs max med min hwm anon file cpu child rules samples <<<"$fig"
  local mode env
  mode=$(vm cat "/proc/$pid/cmdline" | tr '\0' '\n' | sed -n 's/^--interception=//p')
  if vm cat "/proc/$pid/environ" | tr '\0' '\n' | grep -q '^MALLOC_'; then
    env=$(vm cat "/proc/$pid/environ" | tr '\0' '\n' | grep '^MALLOC_' | tr '\n' ' ')
  else
    env="no MALLOC_* variables"
  fi
  # Where the resident pages are, by mapping (the binary, libc, [heap], anonymous, stacks).
  log "footprint $name: RSS by mapping (KiB): $(vm awk '
    /^[0-9a-f]+-[0-9a-f]+ / { name = (NF >= 6) ? $6 : "[anon]" }
    /^Rss:/ { rss[name] += $2 }
    END { for (n in rss) if (rss[n] > 0) printf "%s=%d ", n, rss[n] }' "/proc/$pid/smaps")"
  local line="footprint $name: ${secs}s, $samples samples, $rules service rules, mode $mode, $env: RSS max $max MiB (median $med, min $min; VmHWM $hwm incl. start-up); at the end $anon MiB anonymous + $file MiB file-backed; CPU $cpu % + $child % in children"
  log "$line"
  [ "$rules" -ge "$FOOTPRINT_VIPS" ] || fail "$name: the agent kept $rules service rules, not $FOOTPRINT_VIPS"
  [ "$samples" -ge "$FOOTPRINT_DURATION" ] || fail "$name: $samples RSS samples in a ${FOOTPRINT_DURATION}s run"
  # over A B: A > B (decimals).
  over() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a > b) }'; }
  local total missed="" bad=""
  total=$(awk -v a="$cpu" -v b="$child" 'BEGIN { printf "%.3f", a + b }')
  over "$max" "$rss_target" && missed="RSS $max MiB > $rss_target MiB"
  if [ "$cpu_target" != - ] && over "$total" "$cpu_target"; then
    missed="${missed:+$missed; }CPU $total % > $cpu_target %"
  fi
  printf '| %s | %s | %s s | %s (%s–%s) MiB | %s MiB | %s + %s MiB | %s %% (+ %s %% children) | RSS ≤ %s MiB%s | %s |\n' \
    "$name" "$mode, $env" "$secs" "$med" "$min" "$max" "$hwm" "$anon" "$file" "$cpu" "$child" \
    "$rss_target" "$([ "$cpu_target" = - ] || echo ", CPU ≤ $cpu_target %")" "${missed:+missed: }${missed:-met}" \
    >>"$FOOTPRINT_RESULTS"
  if [ -n "$missed" ]; then
    log "footprint $name: issue 13's target MISSED: $missed"
    [ -z "${FOOTPRINT_STRICT:-}" ] || fail "$name: target missed: $missed"
  fi
  # The ceilings: what this build measures on the tier, with room for a busy CI machine. A
  # change that passes them is a regression, whatever the targets.
  over "$max" "$rss_ceiling" && bad="RSS $max MiB > the ceiling $rss_ceiling MiB"
  over "$total" "$cpu_ceiling" && bad="${bad:+$bad; }CPU $total % > the ceiling $cpu_ceiling %"
  [ -z "$bad" ] || fail "$name: $bad"
}

# run_footprint: a VM of its own (Debian 12), booted while the control plane serves 1,000
# VIPs, and the three runs, each a test of the tier (run_test, from tests/system/run.sh).
run_footprint() {
  FOOTPRINT_DURATION=${FOOTPRINT_DURATION:-${SPA_FOOTPRINT_DURATION:-100}}
  FOOTPRINT_RESULTS=${FOOTPRINT_RESULTS:-$WORK/footprint.md}
  ROOTFS=$("$HERE/rootfs.sh" bookworm)
  log "=== footprint on Debian 12, $FOOTPRINT_VIPS VIPs, runs of ${FOOTPRINT_DURATION}s"
  printf '| run | agent | duration | RSS median (min–max) | VmHWM | end: anon + file | CPU of a core | target (issue 13) | verdict |\n|---|---|---|---|---|---|---|---|---|\n' \
    >"$FOOTPRINT_RESULTS"
  footprint_services add
  new_vm footprint
  configure_metadata
  boot footprint
  run_test footprint_boot_with_1000_vips
  run_test footprint_under_the_unit
  run_test footprint_without_the_malloc_environment
  run_test footprint_without_the_malloc_environment_in_verify_mode
  shutdown_vm
  # The control plane serves only the tier's own VIP again (one request), as before this test.
  footprint_services remove
  log "footprint figures ($FOOTPRINT_RESULTS):"
  cat "$FOOTPRINT_RESULTS" >&2
}

test_footprint_boot_with_1000_vips() {
  local result
  result=$(wait_startup_script 240)
  [ "$result" = success ] || { show_startup_journal; fail "the startup script ended with $result"; }
  wait_for 120 "the agent to intercept $FOOTPRINT_VIPS VIPs" sh -c \
    "[ \$(nsenter -t $VM_PID -a -- iptables-save -t nat | grep -c '^-A SERVICE_PROXY_SERVICE_CIDRS ') -ge $FOOTPRINT_VIPS ]"
}

test_footprint_under_the_unit() {
  vm grep -q '^Environment=MALLOC_' "/etc/systemd/system/$AGENT_UNIT" ||
    fail "the installed unit sets no malloc environment"
  footprint_measure unit "$FOOTPRINT_RSS_UNIT_MIB" "$FOOTPRINT_CPU_UNIT_PCT" \
    "$FOOTPRINT_CEILING_RSS_UNIT_MIB" "$FOOTPRINT_CEILING_CPU_PCT"
}

test_footprint_without_the_malloc_environment() {
  vm mkdir -p "$FOOTPRINT_DROPIN_DIR"
  printf '[Service]\nEnvironment=\n' | vm tee "$FOOTPRINT_DROPIN_DIR/footprint-env.conf" >/dev/null
  footprint_restart
  footprint_measure no-malloc "$FOOTPRINT_RSS_NO_MALLOC_MIB" - \
    "$FOOTPRINT_CEILING_RSS_NO_MALLOC_MIB" "$FOOTPRINT_CEILING_CPU_PCT"
}

test_footprint_without_the_malloc_environment_in_verify_mode() {
  local exec
  exec=$(vm sed -n 's/^ExecStart=//p' "/etc/systemd/system/$AGENT_UNIT")
  case $exec in
    *--interception=enforce*) ;;
    *) fail "the installed unit's ExecStart '$exec' has no --interception=enforce" ;;
  esac
  vm mkdir -p "$FOOTPRINT_DROPIN_DIR"
  printf '[Service]\nEnvironment=\n' | vm tee "$FOOTPRINT_DROPIN_DIR/footprint-env.conf" >/dev/null
  printf '[Service]\nExecStart=\nExecStart=%s\n' "${exec/--interception=enforce/--interception=verify}" |
    vm tee "$FOOTPRINT_DROPIN_DIR/footprint-verify.conf" >/dev/null
  footprint_restart
  footprint_measure verify "$FOOTPRINT_RSS_NO_MALLOC_MIB" - \
    "$FOOTPRINT_CEILING_RSS_NO_MALLOC_MIB" "$FOOTPRINT_CEILING_CPU_PCT"
  vm rm -rf "$FOOTPRINT_DROPIN_DIR"
  vm systemctl daemon-reload
}

# On its own: the tier's world (as tests/system/run.sh makes it) and this one test.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  HERE=$(cd "$(dirname "$0")" && pwd)
  REPO=$(cd "$HERE/../.." && pwd)
  cd "$REPO"
  FOOTPRINT_DURATION=600
  # SPA_FOOTPRINT_STRICT= (empty): judge by the tier's ceilings instead of the targets.
  FOOTPRINT_STRICT=${SPA_FOOTPRINT_STRICT-1}
  while [ $# -gt 0 ]; do
    case $1 in
      --duration) FOOTPRINT_DURATION=${2:?--duration SECONDS}; shift 2 ;;
      --duration=*) FOOTPRINT_DURATION=${1#--duration=}; shift ;;
      *) echo "usage: tests/system/footprint.sh [--duration SECONDS]" >&2; exit 2 ;;
    esac
  done
  case $FOOTPRINT_DURATION in
    '' | *[!0-9]*) echo "tests/system/footprint.sh: --duration takes whole seconds" >&2; exit 2 ;;
  esac
  # shellcheck source=tests/system/lib.sh
  . "$HERE/lib.sh"
  # shellcheck source=tests/system/tests.sh
  . "$HERE/tests.sh"
  [ "$(id -u)" -eq 0 ] || { echo "tests/system/footprint.sh: needs root (it boots containers)" >&2; exit 1; }
  for cmd in debootstrap systemd-nspawn nsenter jq curl python3; do
    command -v "$cmd" >/dev/null || { echo "tests/system/footprint.sh: $cmd is missing: run tests/setup-system.sh" >&2; exit 1; }
  done
  ENVOY_NATIVE=$(find "$REPO"/.venv/lib/ -path "*/site-packages/envoy/_bin/envoy" -type f 2>/dev/null | head -n 1 || true)
  [ -x "$ENVOY_NATIVE" ] || { echo "tests/system/footprint.sh: no Envoy in .venv: run tests/setup-envoy.sh" >&2; exit 1; }
  PIDS=()
  MOUNTS=()
  NSPAWN_PID=""
  VM_PID=""
  WORK=$(mktemp -d /var/tmp/spa-system.XXXXXX)
  NETNS=spa-system-$$
  trap cleanup EXIT
  trap 'exit 143' TERM
  trap 'exit 130' INT
  log "building the world's programs and a release"
  cargo build --locked --quiet --example metadata-emulator --example fake-control-plane
  EMULATOR=$REPO/target/debug/examples/metadata-emulator
  CONTROL_PLANE=$REPO/target/debug/examples/fake-control-plane
  RELEASE_DIR=$WORK/release
  if [ -n "${SPA_FOOTPRINT_RELEASE:-}" ]; then
    # A release made beforehand (deploy/release.sh DIR): measuring variations of one build.
    mkdir -p "$RELEASE_DIR"
    cp "$SPA_FOOTPRINT_RELEASE"/service-proxy-agent-*.tar.gz* "$RELEASE_DIR/"
  else
    deploy/release.sh "$RELEASE_DIR" >&2
  fi
  TARBALL=$(cd "$RELEASE_DIR" && ls service-proxy-agent-*.tar.gz)
  TARBALL_SHA=$(cut -d' ' -f1 "$RELEASE_DIR/$TARBALL.sha256")
  cp "$ENVOY_NATIVE" "$RELEASE_DIR/envoy"
  ENVOY_SHA=$(sha256sum "$RELEASE_DIR/envoy" | cut -d' ' -f1)
  prepare_host
  start_world
  ROOTFS=$("$HERE/rootfs.sh" bookworm)
  mkdir -p "$REPO/target/bench"
  FOOTPRINT_RESULTS=$REPO/target/bench/footprint-booted.md
  FAILED=()
  PASSED=()
  run_footprint
  log "passed: ${PASSED[*]:-none}"
  if [ ${#FAILED[@]} -gt 0 ]; then
    log "FAILED: ${FAILED[*]}"
    exit 1
  fi
fi
