"""Every dataset of a real run, read by every engine that reads Delta: deltalake, Polars' native reader,
DuckDB's own `delta_scan` and `xlmflow.read` return the same rows for each table version.

One CLI run with every model processor, a `--force` rerun and a second date, shared by all checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pyarrow as pa

from tests.readme_snippets import duckdb_delta_extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "examples", "udhr-sample.jsonl")
XLMFLOW = os.path.join(os.path.dirname(sys.executable), "xlmflow")
DATES = ("2026-11-01", "2026-11-02")


def _rows(table: pa.Table, schema: pa.Schema) -> list[str]:
    """A table's rows in one canonical form: columns and types of the table version, order ignored."""
    table = table.select(schema.names).cast(schema)
    return sorted(json.dumps(r, sort_keys=True, default=str) for r in table.to_pylist())


def _engines(uri: str, version: int) -> dict[str, pa.Table]:
    import duckdb
    import polars as pl
    from deltalake import DeltaTable, QueryBuilder

    dt = DeltaTable(uri, version=version)
    con = duckdb.connect()
    con.execute(f"LOAD '{duckdb_delta_extension()}'")
    return {
        "deltalake": pa.table(QueryBuilder().register("t", dt).execute("select * from t")),
        "polars": pl.scan_delta(uri, version=version).collect().to_arrow(),
        "duckdb": con.sql(f"select * from delta_scan('{uri}', version => {version})").to_arrow_table(),
    }


def test_every_engine_reads_every_table_version_alike(cli_env, tmp_path_factory, tmp_path):
    cache = str(tmp_path_factory.getbasetemp() / "xlmflow-model-cache")
    src = tmp_path / "in.jsonl"
    with open(SAMPLE) as f:  # a few languages are enough; each row goes through every processor
        src.write_text("".join(f.readlines()[:12]))
    out = str(tmp_path / "out")
    cmd = [
        XLMFLOW,
        "run",
        str(src),
        "--out",
        out,
        "--model-cache",
        cache,
        "--tasks",
        "lid,ner,embed,classify",
    ]
    cmd += ["--ner-model", "tiny", "--embed-model", "tiny", "--classify-model", "tiny"]
    t0 = time.monotonic()
    for extra in (["--date", DATES[0]], ["--date", DATES[0], "--force"], ["--date", DATES[1]]):
        p = subprocess.run(cmd + extra, capture_output=True, text=True, env=cli_env, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
    print(f"3 runs: {time.monotonic() - t0:.1f} s")
    check_engines(out)


def check_engines(out: str) -> None:
    from deltalake import DeltaTable

    from xlmflow.read import pinned_version, read_partition

    with open(os.path.join(out, "_manifests", f"date={DATES[0]}.json")) as f:
        datasets = sorted(json.load(f)["tables"])
    assert {"documents", "rejects", "entities", "embeddings", "classifications"} <= set(datasets)
    checked = 0
    for name in datasets:
        uri = os.path.join(out, name)
        for version in range(DeltaTable(uri).version() + 1):
            schema = pa.schema(DeltaTable(uri, version=version).schema().to_arrow())
            seen = {engine: _rows(t, schema) for engine, t in _engines(uri, version).items()}
            assert seen["polars"] == seen["deltalake"], f"{name} v{version}: Polars differs"
            assert seen["duckdb"] == seen["deltalake"], f"{name} v{version}: DuckDB differs"
            checked += 1
            for date in DATES:
                if pinned_version(out, name, date) != version:
                    continue
                ours = _rows(read_partition(out, name, date), schema)
                assert ours == [r for r in seen["deltalake"] if json.loads(r)["date"] == date]
                assert ours or name == "rejects", f"{name} of {date} is empty"  # no input row was bad
    # the rerun and the second date are versions of their own: create, run, --force, second date
    assert checked >= 4 * len(datasets)
    vectors = pa.schema(DeltaTable(os.path.join(out, "embeddings")).schema().to_arrow()).field("embedding")
    assert vectors.type == pa.list_(pa.field("element", pa.float32()))
    # the files hold plain lists too (no fixed-size lists a native reader would refuse)
    import pyarrow.parquet as pq

    part = next(p for p in os.scandir(os.path.join(out, "embeddings", f"date={DATES[1]}")))
    assert pa.types.is_list(pq.read_schema(part.path).field("embedding").type)
