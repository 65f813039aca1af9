#!/usr/bin/env bash
# Installs Google's real Python client libraries into the project-local .venv (beside Envoy),
# idempotent. The emulators of Google's APIs in testkit are proved by driving them with these
# clients (endpoint overridden, anonymous credentials), and the discovery documents that
# google-api-python-client ships are the schemas our outputs are checked against.
# Prints the directory of the discovery documents on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${SPA_VENV:-.venv}
if [ ! -x "$venv/bin/pip" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import googleapiclient, google.cloud.compute, google.cloud.logging' 2>/dev/null; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    'google-api-python-client==2.202.0' 'google-cloud-compute==1.56.0' 'google-cloud-logging==3.17.0'
fi
# The OpenMetrics parser of Prometheus' own Python client: the consumer the agent's
# OpenMetrics answer is checked with (tests/metrics_consumers.rs).
if ! "$venv/bin/python" -c 'import prometheus_client.openmetrics.parser' 2>/dev/null; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'prometheus-client==0.26.0'
fi
"$venv/bin/python" -c 'import googleapiclient, os; print(os.path.join(os.path.dirname(googleapiclient.__file__), "discovery_cache", "documents"))'
