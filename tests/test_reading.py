"""The README's reading snippets, run as users run them (fresh interpreters, local and on S3), and the
migration of tables written with fixed-size lists to what native Delta readers accept."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pytest

from tests.readme_snippets import reading_script
from tests.test_delta import DATE, _commit, _run_hex
from xlmflow import delta, delta_schema, history, maintenance, partition, read, storage
from xlmflow.manifest import manifest_uri, read_manifest
from xlmflow.ray_cluster.processors.embed import embeddings_schema

RUNS = 30
# what the snippets found: each block prints its row count (two runs committed, the second is current)
CHECKS = {
    "deltalake": "print('deltalake', docs.num_rows)",
    "polars": "print('polars', docs.height)",
    "duckdb": "print('duckdb', sum(n for _, n in langs))",
    "xlmflow": "print('xlmflow', docs.num_rows)",
}


def _run_many(script: str, env: dict, tmp_path) -> list[subprocess.CompletedProcess]:  # noqa: ANN001
    path = tmp_path / "snippet.py"
    path.write_text(script)

    def one(_: int) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(path)], capture_output=True, text=True, env=env, timeout=120
        )

    with ThreadPoolExecutor(6) as pool:  # parallel: each interpreter mostly waits on imports and I/O
        return list(pool.map(one, range(RUNS)))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_readme_snippets_exit_cleanly_every_time(where, tmp_path, request):
    if where == "local":
        out = str(tmp_path / "out")
        engines = ("deltalake", "polars", "duckdb", "xlmflow")
    else:  # DuckDB would need its httpfs extension and a secret for S3: the README says so
        out = storage.join(request.getfixturevalue("s3_bucket"), "curated")
        engines = ("deltalake", "polars", "xlmflow")
    _commit(out, _run_hex(1), 40, 2)
    _commit(out, _run_hex(2), 30, 3)  # a --force: the reader must see the second run only
    env = {k: v for k, v in os.environ.items() if k != "XLMFLOW_FAULTS"}
    env.update(AWS_REGION="us-east-1", AWS_ALLOW_HTTP="true")  # what delta-rs and Polars read on S3
    runs = _run_many(reading_script(out, DATE, engines, CHECKS), env, tmp_path)
    failed = [(p.returncode, p.stderr[-500:]) for p in runs if p.returncode != 0]
    assert not failed, f"{len(failed)} of {RUNS} runs failed: {failed[0]}"
    assert runs[0].stdout.split() == [w for e in engines for w in (e, "30")]


def _fixed_size_files(out: str, name: str) -> int:
    import pyarrow.parquet as pq

    table = delta.open_table(out, name)
    paths = pa.table(table.get_add_actions(flatten=True))["path"].to_pylist()
    return sum(
        pa.types.is_fixed_size_list(pq.read_schema(os.path.join(out, name, p)).field("embedding").type)
        for p in paths
    )


def test_migrate_rewrites_fixed_size_lists_that_native_readers_refuse(tmp_path):
    """A table written the old way (fixed-size list files, `array<float>` table) becomes readable by
    Polars' native reader; rows, manifests and the other dates' files stay as they were."""
    import polars as pl
    import pyarrow.parquet as pq

    from xlmflow.read import read_partition

    out = str(tmp_path / "out")
    dates = (DATE, "2026-11-02")
    vecs = pa.FixedSizeListArray.from_arrays(pa.array([float(j) for j in range(12)], pa.float32()), 4)
    old = pa.table({"doc_id": ["a", "b", "c"], "instance": ["e"] * 3, "embedding": vecs, "model": ["m"] * 3})
    for i, date in enumerate(dates):  # as earlier versions wrote them: fixed-size lists in the files
        run = _run_hex(10 + i)
        rel = f"embeddings/date={date}/part-{run[:8]}-00000.parquet"
        os.makedirs(os.path.dirname(os.path.join(out, rel)), exist_ok=True)
        pq.write_table(old, os.path.join(out, rel))
        f = {"path": rel, "rows": 3, "bytes": os.path.getsize(os.path.join(out, rel))}
        base = delta_schema.ensure_table(out, "embeddings", old.schema).version()
        v = delta.replace_files(out, "embeddings", date, [f], base, {"run_id": run, "date": date})
        manifest = {"date": date, "run_id": run, "tables": {"embeddings": v}}
        storage.write_json(manifest_uri(out, date), manifest)
    uri = delta.table_uri(out, "embeddings")
    with pytest.raises(Exception, match="(?i)mismatch|schema"):
        pl.read_delta(uri)  # what an analyst met before the migration
    before = {d: read_partition(out, "embeddings", d).to_pylist() for d in dates}

    assert maintenance.migrate(out) == {"converted": {}, "rewritten": {"embeddings": 2}}
    assert _fixed_size_files(out, "embeddings") == 0
    frame = pl.read_delta(uri)
    assert frame.height == 6 and frame.schema["embedding"] == pl.List(pl.Float32)
    for d in dates:  # the manifests pin the migrated version: same rows, now as plain lists
        assert read_partition(out, "embeddings", d).to_pylist() == before[d]
        assert partition.realign_tables(out, d, read_manifest(out, d)) == []  # pins what is current
        # the rewrite is still the run's: history shows that run, current, at the migrated version
        runs = history.runs_of(out, d)
        assert [(r["run_id"], r["current"]) for r in runs] == [(_run_hex(10 + dates.index(d)), True)]
        # the rewritten files are the date's own: never debris, whatever the log still holds
        assert partition.find_debris(out, d, read_manifest(out, d)) == []
        assert partition._date_runs(out, d, read_manifest(out, d)) >= set(read_manifest(out, d)["migrations"])
    with pytest.raises(Exception, match="nothing to migrate"):
        maintenance.migrate(out)


def test_read_partition_opens_only_the_dates_files(tmp_path):
    out = str(tmp_path / "out")
    for i, date in enumerate(("2026-11-01", "2026-11-02", "2026-11-03")):
        _commit(out, _run_hex(20 + i), 5, 1, date=date)
    version = delta.open_table(out, "documents").version()
    files = read.partition_dataset(out, "documents", "2026-11-02", version).files
    assert len(files) == 1 and "date=2026-11-02/" in files[0]
    assert set(read.read_version(out, "documents", "2026-11-02", version)["date"].to_pylist()) == {
        "2026-11-02"
    }


def test_writer_writes_vectors_as_lists_of_their_declared_width(tmp_path):
    import pyarrow.parquet as pq

    from tests.tables import write_table
    from xlmflow import schemas

    out = str(tmp_path / "out")
    row = {"doc_id": "a", "instance": "embed", "model": "m", "pooling": "mean"}
    good = pa.Table.from_pylist([{**row, "embedding": [0.5] * 4}], schema=embeddings_schema(4))
    f, schema = write_table(out, "embeddings", DATE, _run_hex(1), good)
    assert schema.field("embedding").type == pa.list_(pa.float32())
    assert pq.read_schema(os.path.join(out, f["path"])).field("embedding").type == pa.list_(pa.float32())
    bad = pa.Table.from_pylist([{**row, "embedding": [0.5] * 3}], schema=embeddings_schema(4))
    with pytest.raises(ValueError, match="1 vectors are not 4 values long"):
        write_table(out, "embeddings", DATE, _run_hex(2), bad)
    # a plug-in's fixed-size list column is written as a list too, its width kept and checked
    vecs = pa.FixedSizeListArray.from_arrays(pa.array([1.0, 2.0], pa.float32()), 2)
    _, schema = write_table(out, "vectors", DATE, _run_hex(3), pa.table({"v": vecs}))
    assert schema.field("v").type == pa.list_(pa.float32()) and schema.field("v").metadata == {
        schemas.WIDTH_KEY: b"2"
    }
