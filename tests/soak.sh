#!/usr/bin/env bash
# Soak run of the daemon, not part of the test suite: builds the agent in release, then runs it
# for SOAK_MINUTES (default 10) in `--interception enforce` against the real Envoy fed by the
# test xDS control plane (a VIP added or removed every second), 5,000 log lines a second into a
# followed log rotated every minute, and the metadata-server emulator, all in fresh PID, mount
# and network namespaces. Samples VmRSS and open descriptors every 10 s, prints the curve and
# the figures; exits non-zero if RSS grows by more than 1 MiB after the warm-up (first 2 min),
# if descriptors grow, or if a log line written is missing from the agent's /metrics count.
#
#   sudo tests/soak.sh                      # 10 minutes
#   SOAK_MINUTES=3 sudo -E tests/soak.sh    # shorter
#
# Needs root (namespaces, iptables), Envoy (tests/setup-envoy.sh, or SPA_ENVOY_BIN), jq.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "soak.sh needs root (network namespaces, iptables)" >&2
  exit 2
fi
for tool in unshare jq ip iptables-save; do
  command -v "$tool" >/dev/null || { echo "soak.sh needs $tool (tests/setup-system.sh)" >&2; exit 2; }
done

target=${CARGO_TARGET_DIR:-target}
echo "building the agent (release) and the soak harness..." >&2
cargo build --release --bin service-proxy-agent >&2
harness=$(cargo build --bench soak --message-format=json 2>/dev/null \
  | jq -r 'select(.executable != null and .target.name == "soak") | .executable' | tail -n 1)
[ -x "$harness" ] || { echo "the soak harness was not built" >&2; exit 2; }

export SOAK_MINUTES=${SOAK_MINUTES:-10}
export SOAK_AGENT=${SOAK_AGENT:-$target/release/service-proxy-agent}
export SOAK_DIR=${SOAK_DIR:-$target/soak}
mkdir -p "$SOAK_DIR"
SOAK_AGENT=$(realpath "$SOAK_AGENT")
SOAK_DIR=$(realpath "$SOAK_DIR")
export SOAK_AGENT SOAK_DIR
echo "soaking $SOAK_AGENT for $SOAK_MINUTES min (load: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
"$harness" 2>&1 | tee "$SOAK_DIR/soak.txt"
exit "${PIPESTATUS[0]}"
