#!/usr/bin/env bash
# deploy/release.sh OUTDIR: builds a release of service-proxy-agent into OUTDIR:
#   service-proxy-agent-<version>-<arch>.tar.gz   bin/service-proxy-agent, systemd/*.service,
#                                                 startup-script.sh, logrotate/envoy,
#                                                 ops-agent/service-proxy-agent.yaml, LICENSE,
#                                                 README.md (deploying it)
#   service-proxy-agent_<version>_<debian-arch>.deb
# and a `<file>.sha256` beside each (sha256sum's format).
#
# The binary is built with cargo-zigbuild against glibc GLIBC_FLOOR (default 2.17, the oldest
# Rust's standard library supports): it runs on any x86_64/aarch64 Linux with glibc >= that
# (Debian 8+, RHEL 7+, Ubuntu 14.04+). cargo-zigbuild and zig come from PyPI into .zig-venv when
# missing (SPA_ZIG_VENV names another venv). CARGO_TARGET_DIR is honoured, as by cargo.
#
# The .deb is made with dpkg-deb from the same binary (not cargo-deb, which would build its own
# binary without the glibc floor, and costs minutes to install): /usr/bin/service-proxy-agent,
# the units in /lib/systemd/system (the agent's ExecStart pointing at /usr/bin), the logrotate
# config in /etc/logrotate.d. Units are not enabled by the package: the startup script (or
# the administrator) does that, after writing Envoy's bootstrap.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=${1:?usage: deploy/release.sh OUTDIR}
mkdir -p -- "$out"
out=$(cd -- "$out" && pwd)
floor=${GLIBC_FLOOR:-2.17}
arch=$(uname -m)
case $arch in
  x86_64) deb_arch=amd64 ;;
  aarch64) deb_arch=arm64 ;;
  *) echo "release.sh: unsupported architecture $arch" >&2; exit 1 ;;
esac
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[ -n "$version" ] || { echo "release.sh: no version in Cargo.toml" >&2; exit 1; }
# Reproducible archives: every timestamp is the last commit's.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}

zig_venv=${SPA_ZIG_VENV:-$root/.zig-venv}
if [ ! -x "$zig_venv/bin/cargo-zigbuild" ]; then
  python3 -m venv "$zig_venv"
  "$zig_venv/bin/pip" install --quiet --disable-pip-version-check ziglang cargo-zigbuild
fi
target=$arch-unknown-linux-gnu
PATH=$zig_venv/bin:$PATH cargo zigbuild --release --locked --target "$target.$floor" \
  --bin service-proxy-agent >&2
bin=${CARGO_TARGET_DIR:-target}/$target/release/service-proxy-agent
# The floor, checked on the binary itself: no symbol version newer than it.
newest=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1)
if [ "$(printf '%s\n' "GLIBC_$floor" "$newest" | sort -V | tail -n 1)" != "GLIBC_$floor" ]; then
  echo "release.sh: $bin needs $newest, above the floor GLIBC_$floor" >&2
  exit 1
fi

stage=$(mktemp -d)
trap 'rm -rf -- "$stage"' EXIT
name=service-proxy-agent-$version-$arch
d=$stage/$name
install -D -m 0755 "$bin" "$d/bin/service-proxy-agent"
install -D -m 0644 systemd/envoy.service "$d/systemd/envoy.service"
install -D -m 0644 systemd/service-proxy-agent.service "$d/systemd/service-proxy-agent.service"
install -D -m 0755 deploy/startup-script.sh "$d/startup-script.sh"
install -D -m 0644 deploy/logrotate/envoy "$d/logrotate/envoy"
install -D -m 0644 deploy/ops-agent/service-proxy-agent.yaml "$d/ops-agent/service-proxy-agent.yaml"
install -D -m 0644 LICENSE "$d/LICENSE"
install -D -m 0644 deploy/README.md "$d/README.md"
tar -C "$stage" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
  -cf - "$name" | gzip -n -9 >"$out/$name.tar.gz"

deb=$stage/deb
install -D -m 0755 "$bin" "$deb/usr/bin/service-proxy-agent"
install -D -m 0644 systemd/envoy.service "$deb/lib/systemd/system/envoy.service"
sed 's#/usr/local/bin/service-proxy-agent#/usr/bin/service-proxy-agent#' \
  systemd/service-proxy-agent.service >"$stage/agent.service"
install -D -m 0644 "$stage/agent.service" "$deb/lib/systemd/system/service-proxy-agent.service"
install -D -m 0644 deploy/logrotate/envoy "$deb/etc/logrotate.d/envoy"
install -D -m 0644 deploy/ops-agent/service-proxy-agent.yaml \
  "$deb/usr/share/doc/service-proxy-agent/ops-agent/service-proxy-agent.yaml"
install -D -m 0644 LICENSE "$deb/usr/share/doc/service-proxy-agent/copyright"
install -D -m 0755 deploy/startup-script.sh "$deb/usr/share/service-proxy-agent/startup-script.sh"
mkdir -p "$deb/DEBIAN"
echo /etc/logrotate.d/envoy >"$deb/DEBIAN/conffiles"
cat >"$deb/DEBIAN/control" <<CONTROL
Package: service-proxy-agent
Version: $version
Architecture: $deb_arch
Maintainer: service-proxy-agent maintainers <service-proxy-agent@users.noreply.github.com>
Depends: libc6 (>= $floor), iptables
Recommends: logrotate
Section: net
Priority: optional
Homepage: https://github.com/service-proxy-agent/service-proxy-agent
Description: on-VM agent for Envoy sidecars managed by Cloud Service Mesh
 Watches the Envoy sidecar (admin API, logs), iptables and the metadata server,
 names faults as findings, publishes them (guest attributes, journald, Cloud
 Logging, Prometheus) and keeps iptables interception in step with Envoy.
CONTROL
find "$deb" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
deb_file=service-proxy-agent_${version}_$deb_arch.deb
dpkg-deb --root-owner-group -Zxz --build "$deb" "$out/$deb_file" >/dev/null

cd -- "$out"
for f in "$name.tar.gz" "$deb_file"; do
  sha256sum -- "$f" >"$f.sha256"
done
echo "release.sh: $out/$name.tar.gz (glibc >= $floor) and $out/$deb_file"
