#!/usr/bin/env bash
# rootfs.sh SUITE [minimal]: prints the path of a Debian SUITE root filesystem made by
# debootstrap from Debian's packages, building it when it is not cached yet.
#
# The cache lives outside the clone (SPA_SYSTEM_CACHE, default
# /var/cache/service-proxy-agent-tests) under a key that is a hash of everything that decides
# its content (suite, variant, package list, mirror), so a second run on the same machine does
# not debootstrap again and a changed package list builds a new one. A cached tree is never
# written to: the tier boots an overlay of it.
set -euo pipefail
suite=$1
kind=${2:-booted}
cache=${SPA_SYSTEM_CACHE:-/var/cache/service-proxy-agent-tests}
mirror=${SPA_DEBIAN_MIRROR:-http://deb.debian.org/debian}
case $kind in
  # What a Compute Engine Debian image has that the install path uses: systemd as PID 1, curl,
  # iptables, logrotate, CA certificates. No Python: Envoy comes as a pinned binary.
  booted) packages=systemd,systemd-sysv,dbus,iproute2,iptables,curl,ca-certificates,logrotate,procps ;;
  # Enough to run a binary with chroot (the glibc floor proof).
  minimal) packages= ;;
  *) echo "rootfs.sh: unknown kind $kind" >&2; exit 2 ;;
esac
key=$(printf '%s\n' "$suite" minbase "$packages" "$mirror" "format 1" | sha256sum | cut -c1-16)
dir=$cache/rootfs-$suite-$key
if [ -f "$dir/.complete" ]; then
  echo "$dir"
  exit 0
fi
mkdir -p -- "$cache"
exec 8>"$cache/.lock-$suite-$key"
flock -w 900 8 || { echo "rootfs.sh: $cache/.lock-$suite-$key held for 15 minutes" >&2; exit 1; }
if [ ! -f "$dir/.complete" ]; then
  tmp=$(mktemp -d "$cache/.build-$suite.XXXXXX")
  trap 'rm -rf -- "$tmp"' EXIT
  echo "rootfs.sh: debootstrap $suite ($kind) into $dir" >&2
  debootstrap --variant=minbase ${packages:+--include=$packages} "$suite" "$tmp/root" "$mirror" \
    >"$tmp/debootstrap.log" 2>&1 || {
      tail -n 30 "$tmp/debootstrap.log" >&2
      echo "rootfs.sh: debootstrap $suite failed (log above)" >&2
      exit 1
    }
  rm -rf -- "$tmp/root/var/cache/apt/archives/"*.deb
  touch "$tmp/root/.complete"
  rm -rf -- "$dir"
  mv -T -- "$tmp/root" "$dir"
fi
echo "$dir"
