#!/usr/bin/env bash
# Installs the Debian packages the tests and the demo use (as root), when missing.
set -euo pipefail
need=()
for pair in iptables:iptables ip:iproute2 debootstrap:debootstrap systemd-nspawn:systemd-container objdump:binutils dpkg-deb:dpkg curl:curl jq:jq rg:ripgrep shellcheck:shellcheck \
            openssl:openssl unshare:util-linux nsenter:util-linux setpriv:util-linux \
            systemd-analyze:systemd strace:strace faketime:faketime python3:python3 \
            perl:perl-base promtool:prometheus zsh:zsh fish:fish man:man-db groff:groff-base; do
  cmd=${pair%%:*} pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages (${need[*]}) and not root: install them first" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2046
  apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
  # Only promtool is wanted from `prometheus`: don't leave its server running on :9090.
  if printf '%s\n' "${need[@]}" | grep -qx prometheus && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi
