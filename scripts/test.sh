#!/usr/bin/env bash
# The test command: install (idempotent), lint, then the whole pytest suite (real moto S3 server,
# real local Ray, real Prefect server and headless Chromium for the operations tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Debian's Chromium for the Prefect UI test (no browser download: the registries only)
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; the UI test will be skipped"
fi
# Debian's PostgreSQL for the Prefect-on-PostgreSQL test (started and dropped by the test itself)
if ! command -v pg_createcluster >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
    || echo "warning: could not install postgresql; the PostgreSQL test will be skipped"
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# floors import only downward, no import cycles (import-linter); no dead code beyond the whitelist
.venv/bin/python scripts/lint_imports.py
.venv/bin/vulture xlmflow flows tasks ray_cluster benchmarks vulture_whitelist.py --min-confidence 60
export PREFECT_SERVER_ANALYTICS_ENABLED=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
exec .venv/bin/pytest -q -rs --durations=15 "$@"
