#!/usr/bin/env bash
# Seeds every fuzz target's corpus (fuzz/corpus/<target>/, git-ignored) from the real captured
# fixtures in tests/fixtures/. Idempotent: seeds are rewritten, inputs the fuzzer found are kept.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
fx="$here/../tests/fixtures"
corpus="${FUZZ_CORPUS_DIR:-$here/corpus}"

seed() { # seed TARGET FILE...: copies each file as seed-<name>
  local target=$1
  shift
  mkdir -p "$corpus/$target"
  local f
  for f in "$@"; do
    cp "$f" "$corpus/$target/seed-$(basename "$f")"
  done
}

seed server_info "$fx"/envoy/*server_info*.json
seed listeners "$fx"/envoy/*config_dump*.json
seed clusters "$fx"/envoy/*clusters*.json
seed stats "$fx"/envoy/*stats*.txt
seed iptables_save "$fx"/iptables/*.save "$fx"/iptables/*.rules "$fx"/intercept/*.restore
seed service_proxy_metadata "$fx"/metadata/*.json
# The metadata server's plain values, as it returns them.
printf 'projects/123456789012/zones/us-central1-a' >"$corpus/service_proxy_metadata/seed-zone"
printf 'projects/123456789012/networks/default' >"$corpus/service_proxy_metadata/seed-network"
printf 'my-project-42' >"$corpus/service_proxy_metadata/seed-project-id"
printf 'https://www.googleapis.com/auth/cloud-platform\nhttps://www.googleapis.com/auth/logging.write\n' \
  >"$corpus/service_proxy_metadata/seed-scopes"

# /ready: the first byte picks the status (0 → 200, 1 → 503), the rest is the body.
mkdir -p "$corpus/ready"
i=0
for body in 'LIVE' 'PRE_INITIALIZING' 'INITIALIZING' 'DRAINING' ''; do
  printf '\000%s\n' "$body" >"$corpus/ready/seed-200-$i"
  printf '\001%s\n' "$body" >"$corpus/ready/seed-503-$i"
  i=$((i + 1))
done

# The log classifier: a 4-byte header (filter, entry cap, chunking seed; see the target), then
# the log. Each real log whole and in windows of 40 lines, and every case of corpus.txt.
mkdir -p "$corpus/log_classifier"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for f in "$fx"/logs/*.log; do
  name=$(basename "$f" .log)
  printf '\000\000\022\064' | cat - "$f" >"$corpus/log_classifier/seed-$name"
  split -l 40 -d -a 3 "$f" "$tmp/$name."
done
awk -v dir="$tmp" '
  /^@case / { n++; next }
  /^@/ || /^#/ { next }
  n { print > (dir "/case." sprintf("%03d", n)) }
' "$fx/logs/corpus.txt"
i=0
for f in "$tmp"/*; do
  # Alternate the header: fast path with the default cap / every entry with a 64-byte cap.
  if [ $((i % 2)) -eq 0 ]; then h='\000\000\253\315'; else h='\001\020\253\315'; fi
  printf '%b' "$h" | cat - "$f" >"$corpus/log_classifier/seed-$(basename "$f")"
  i=$((i + 1))
done

# The config file: no fixture exists, so a few hand-written files using every key.
mkdir -p "$corpus/config_toml"
cat >"$corpus/config_toml/seed-full.toml" <<'EOF'
envoy-admin = "http://127.0.0.1:15000"
allow-remote-admin = false
envoy-log-dir = "/var/log/envoy"
envoy-user = "envoy"
interception = "enforce"
proxy-port = 15001
serving-ports = [80, 8080]
poll-interval = "10s"
heartbeat-interval = "1m"
finding-ttl = "10m"
metrics-addr = "127.0.0.1:15091"
allow-remote-metrics = false
log-format = "json"
serial-port = "/dev/ttyS2"
cloud-logging = "auto"
cloud-logging-endpoint = "https://logging.googleapis.com"
control-plane = "trafficdirector.googleapis.com:443"
EOF
printf 'interception = "verify"\nserving-ports = "80,443"\nmetrics-addr = "off"\n' \
  >"$corpus/config_toml/seed-strings.toml"
printf 'envoy-admin = "http://10.0.0.2:15000"\nallow-remote-admin = true\nenvoy-user = 1337\n' \
  >"$corpus/config_toml/seed-remote.toml"
printf '# empty\n' >"$corpus/config_toml/seed-empty.toml"

for d in "$corpus"/*/; do
  printf '%-24s %4d inputs\n' "$(basename "$d")" "$(find "$d" -type f | wc -l)"
done
