#!/usr/bin/env bash
# Install, then run the main job on the bundled sample, fully offline: local directory output,
# local Ray, Prefect without a server, tiny smoke-test XLM-R models (their labels are noise).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PREFECT_SERVER_ANALYTICS_ENABLED=false HF_HUB_OFFLINE=1
.venv/bin/xlmflow run examples/udhr-sample.jsonl --out ./out --date 2026-11-01 \
  --tasks lid,ner,embed --ner-model tiny --embed-model tiny "$@"
.venv/bin/python - <<'PY'
import duckdb
print(duckdb.sql("select lang, count(*) n from read_parquet('out/documents/date=2026-11-01/*.parquet') group by 1 order by 2 desc limit 8"))
PY
