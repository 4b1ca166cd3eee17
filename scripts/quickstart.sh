#!/usr/bin/env bash
# Install, then run the main job on the bundled sample, fully offline: local directory output,
# local Ray, Prefect without a server, tiny smoke-test XLM-R models (their labels are noise).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PREFECT_SERVER_ANALYTICS_ENABLED=false HF_HUB_OFFLINE=1
OUT=${XLMFLOW_OUT:-./out}
.venv/bin/xlmflow run examples/udhr-sample.jsonl --out "$OUT" --date 2026-11-01 \
  --tasks lid,ner,embed --ner-model tiny --embed-model tiny "$@"
OUT="$OUT" .venv/bin/python - <<'PY'
import os
import duckdb
from xlmflow.read import read_partition
docs = read_partition(os.environ["OUT"], "documents", "2026-11-01")
print(duckdb.sql("select lang, count(*) n from docs where date = '2026-11-01' group by 1 order by 2 desc limit 8"))
PY
