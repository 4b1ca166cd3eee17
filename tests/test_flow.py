"""End to end: the partition flow on a real local Ray and a real (temporary) Prefect API.

Covers the contract users rely on: outputs are Delta tables that deltalake and DuckDB read, every input
row accounted for in the manifest, reruns are no-ops, --force commits a new version whole (the old one
stays readable until vacuum), S3 behaves like local disk, and a shard whose actor dies is retried with
no duplicated output.
"""

import json
import math
import os

import duckdb
import pytest
from deltalake import DeltaTable

from xlmflow import delta, maintenance, storage
from xlmflow.flows.corpus import corpus_flow
from xlmflow.manifest import manifest_uri
from xlmflow.ray_cluster.registry import make_job
from xlmflow.read import read_version

pytestmark = pytest.mark.slow
SAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "udhr-sample.jsonl")
BAD_LINES = [
    '{"id": "bad-json", "text": "unterminated',
    '["not", "an", "object"]',
    '{"id": "no-text"}',
    '{"id": "empty", "text": "   "}',
    '{"id": "lone", "text": "\\ud800 broken"}',
]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "in" / "corpus.jsonl"
    path.parent.mkdir()
    with open(SAMPLE, encoding="utf-8") as f:
        good = f.read().splitlines()
    # an exact duplicate of the first document under another id
    dup = json.loads(good[0]) | {"id": "dup-of-first"}
    path.write_text(
        "\n".join(good + BAD_LINES + [json.dumps(dup, ensure_ascii=False)]) + "\n", encoding="utf-8"
    )
    return str(path), len(good)


# doc ids and (source_row, reason) of rejects for this input, as the plain-Parquet layout wrote them
EXPECTED = os.path.join(os.path.dirname(__file__), "data", "expected_flow_ids.json")


def _read(out: str, dataset: str, date: str, manifest: dict):
    """The committed partition as DuckDB reads it: over the pyarrow dataset of the pinned table version."""
    dt = DeltaTable(
        delta.table_uri(out, dataset),
        version=manifest["tables"][dataset],
        storage_options=delta.storage_options(delta.table_uri(out, dataset)),
    )
    con = duckdb.connect()
    con.register("t", dt.to_pyarrow_dataset())
    return con.sql(f"select * from t where date = '{date}'")


def _run(corpus_path, out, **kw):
    opts = kw.pop("options", {}) | {"shard_chars": 3000}
    return corpus_flow(
        inputs=[corpus_path], settings=make_job(out=out, tasks="lid", **opts, **kw), date="2026-11-01"
    )


def test_run_rerun_force_local(prefect_harness, ray_local, corpus, tmp_path):
    path, n_good = corpus
    out = str(tmp_path / "out")
    # part files as small as they get (one per staged shard, languages grouped by shard); every run of
    # the test has the same settings, so its Ray workers are reused
    small = {"target_file_bytes": 1}
    res = _run(path, out, options=small)
    assert res["status"] == "committed"
    m = res["manifest"]
    c = m["counts"]
    assert c["input_rows"] == n_good + len(BAD_LINES) + 1
    assert c["input_rows"] == c["documents"] + c["rejects"]
    assert c["documents"] == n_good and c["rejects"] == len(BAD_LINES) + 1
    assert set(c["rejects_by_reason"]) >= {"invalid_json", "missing_text", "empty_text", "duplicate"}
    assert m["shards"]["total"] > 3 and not m["shards"]["failed"]
    # which language detector decided each document (CLD2 most, the script alone some)
    assert sum(c["lid_decided_by"].values()) == n_good and c["lid_decided_by"]["cld2"] > n_good / 2
    assert m["models"]["lid"]["detectors"]["fast"]["name"] == "cld2"
    # outputs: Delta tables; DuckDB reads the pinned version, the same rows the plain layout wrote
    docs = _read(out, "documents", "2026-11-01", m)
    assert docs.count("*").fetchall()[0][0] == n_good
    cols = set(docs.columns)
    assert {"doc_id", "text", "lang", "lang_score", "n_chars", "source", "source_row", "date"} <= cols
    eng = docs.filter("doc_id = 'udhr:a1:p1:eng_Latn'").fetchall()
    assert len(eng) == 1 and eng[0][docs.columns.index("lang")] == "eng_Latn"
    rej = _read(out, "rejects", "2026-11-01", m)
    assert {"source", "source_row", "reason", "detail", "raw"} <= set(rej.columns)
    with open(EXPECTED) as f:
        expected = json.load(f)
    assert sorted(r[0] for r in docs.select("doc_id").fetchall()) == expected["documents"]
    assert sorted([r[0], r[1]] for r in rej.select("source_row, reason").fetchall()) == expected["rejects"]
    assert os.path.exists(manifest_uri(out, "2026-11-01"))
    assert not os.path.exists(os.path.join(out, "_staging", "date=2026-11-01"))

    # rerun: a committed partition is not recomputed
    again = _run(path, out, options=small)
    assert again["status"] == "skipped" and again["manifest"]["run_id"] == m["run_id"]

    # --force: a new version of every table; the previous one stays readable by number until vacuum
    forced = _run(path, out, force=True, options=small)
    m2 = forced["manifest"]
    assert forced["status"] == "committed" and m2["run_id"] != m["run_id"]
    assert m2["counts"] == m["counts"]
    assert all(m2["tables"][n] == m["tables"][n] + 1 for n in m["tables"])
    assert _read(out, "documents", "2026-11-01", m).count("*").fetchall()[0][0] == n_good
    _skips_files_on_lang(out, "2026-11-01")
    # what DESCRIBE HISTORY shows of the run: its id, config hash and totals (breakdowns stay in `xlmflow`)
    shown = json.loads(DeltaTable(delta.table_uri(out, "documents")).history(1)[0]["userMetadata"])
    assert (shown["run_id"], shown["date"], shown["config_hash"]) == (
        m2["run_id"],
        "2026-11-01",
        m2["config_hash"],
    )
    assert shown["counts"] == {k: v for k, v in m2["counts"].items() if not isinstance(v, dict)}
    assert shown["counts"]["documents"] == n_good and "by_lang" in m2["counts"]

    def parts() -> list[str]:
        return sorted(p for p in storage.list_files(out) if p.endswith(".parquet"))

    def listed(*ms: dict) -> list[str]:
        return sorted(storage.join(out, f["path"]) for x in ms for fs in x["files"].values() for f in fs)

    assert parts() == listed(m, m2)  # superseded files are kept (a plain glob would see both runs)
    maintenance.vacuum(out, retain_hours=0)
    assert parts() == listed(m2)

    # a --force run crashed after its first table commit, and the files the manifest pins were deleted
    # behind xlmflow's back: the plain rerun cannot point the table back at them, so it computes the
    # partition again (its inputs are unchanged) instead of reporting "already committed"
    from tests.tables import write_table

    crashed = "c" * 32
    rows = read_version(out, "documents", "2026-11-01", m2["tables"]["documents"]).drop(["date"])
    f, _ = write_table(out, "documents", "2026-11-01", crashed, rows.slice(0, 3))
    delta.replace_files(out, "documents", "2026-11-01", [f], m2["tables"]["documents"], {"run_id": crashed})
    for f in m2["files"]["documents"]:
        os.unlink(storage.join(out, f["path"]))
    healed = _run(path, out, options=small)
    assert healed["status"] == "committed" and healed["manifest"]["counts"] == m["counts"]
    latest = DeltaTable(delta.table_uri(out, "documents")).to_pyarrow_table()
    assert sorted(latest.column("doc_id").to_pylist()) == expected["documents"]


def _skips_files_on_lang(out: str, date: str) -> None:
    """The writer tasks' statistics are in the log: each part file's lang range is its rows' range,
    and delta-rs, reading the log alone, keeps only the files whose range holds the language."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = DeltaTable(delta.table_uri(out, "documents"))
    files = delta.partition_files(table, date)
    assert len(files) > 3
    holding = set()
    for f in files:
        stats = json.loads(f["stats"])
        langs = pq.read_table(storage.join(out, "documents", f["path"]), columns=["lang"])["lang"]
        bounds = pc.min_max(langs).as_py()
        assert (stats["minValues"]["lang"], stats["maxValues"]["lang"]) == (bounds["min"], bounds["max"])
        assert stats["numRecords"] == len(langs) and stats["nullCount"]["lang"] == 0
        if "deu_Latn" in langs.to_pylist():
            holding.add(f["path"])
    kept = {u.split("/documents/", 1)[1] for u in table.file_uris(file_pruning_predicate="lang = 'deu_Latn'")}
    assert holding and holding <= kept and len(kept) < len(files), (len(holding), len(kept), len(files))


def test_flow_refuses_an_output_it_cannot_write_or_would_read_back(prefect_harness, corpus, tmp_path):
    # what a scheduled run (no CLI checks in front of it) says, before it takes a lease or starts Ray
    from xlmflow.errors import ConfigError

    path, _ = corpus
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(ConfigError, match="taken exists and is not a directory"):
        _run(path, str(tmp_path / "taken" / "out"))
    folder = os.path.dirname(path)
    with pytest.raises(ConfigError, match="is inside the input"):
        corpus_flow(
            inputs=[folder],
            settings=make_job(out=os.path.join(folder, "out"), tasks="lid"),
            date="2026-11-01",
        )


def test_same_on_s3(prefect_harness, ray_local, corpus, s3_bucket):
    path, n_good = corpus
    src = storage.join(s3_bucket, "raw", "corpus.jsonl")
    with open(path, "rb") as f:
        storage.write_bytes(src, f.read())
    out = storage.join(s3_bucket, "curated")
    # the file is cut into byte ranges read by several tasks, dedup runs in three buckets: on S3 too
    res = _run(storage.join(s3_bucket, "raw") + "/", out, options={"split_bytes": 32768, "dedup_buckets": 3})
    m = res["manifest"]
    assert m["ingest"] == {"splits": math.ceil(os.path.getsize(path) / 32768), "dedup_buckets": 3}
    assert res["status"] == "committed" and m["counts"]["documents"] == n_good
    assert m["counts"]["input_rows"] == m["counts"]["documents"] + m["counts"]["rejects"]
    assert storage.exists(manifest_uri(out, "2026-11-01"))
    assert storage.list_files(storage.join(out, "_staging")) == []
    assert _read(out, "documents", "2026-11-01", m).count("*").fetchall()[0][0] == n_good
    assert _run(src, out)["status"] == "skipped"  # (forced runs on S3: tests/test_lease_cli.py)


def test_actor_death_retries_shard_without_duplicates(prefect_harness, ray_local, corpus, tmp_path):
    from tests.conftest import FAULTS_FILE, write_faults

    path, n_good = corpus
    marker = tmp_path / "crashed"
    write_faults(FAULTS_FILE, shard={"prefix": "000-00002", "action": "exit", "marker": str(marker)})
    try:
        res = _run(path, str(tmp_path / "out"))
    finally:
        os.remove(FAULTS_FILE)
    assert marker.exists(), "the fault was not injected"
    m = res["manifest"]
    assert not m["shards"]["failed"] and m["counts"]["documents"] == n_good
    ids = [
        r[0] for r in _read(str(tmp_path / "out"), "documents", "2026-11-01", m).select("doc_id").fetchall()
    ]
    assert len(ids) == len(set(ids)) == n_good


def test_systemic_shard_error_fails_run_then_rerun_resumes(prefect_harness, ray_local, corpus, tmp_path):
    """A shard that raises (e.g. storage errors) fails the run instead of committing its rows as rejects;
    the other shards are kept and the rerun finishes with the same output as a clean run."""
    from tests.conftest import FAULTS_FILE, write_faults
    from xlmflow.errors import FatalError
    from xlmflow.ray_cluster.actor import DONE_MARKER

    path, n_good = corpus
    out = str(tmp_path / "out")
    write_faults(
        FAULTS_FILE, shard={"prefix": "000-00001", "action": "raise", "marker": str(tmp_path / "raised")}
    )
    try:
        with pytest.raises(FatalError, match="rerun the same command to resume"):
            _run(path, out)
    finally:
        os.remove(FAULTS_FILE)
    assert not storage.exists(manifest_uri(out, "2026-11-01"))  # not committed
    markers = [f for f in storage.list_files(os.path.join(out, "_staging")) if f.endswith(DONE_MARKER)]
    assert markers, "finished shards were not kept for the rerun"
    res = _run(path, out)
    assert res["status"] == "committed"
    m = res["manifest"]
    assert m["counts"]["documents"] == n_good and not m["shards"]["failed"]
    assert m["counts"]["input_rows"] == m["counts"]["documents"] + m["counts"]["rejects"]
