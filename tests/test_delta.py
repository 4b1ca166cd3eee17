"""The Delta layer alone (no Ray, no Prefect): commits of already written files, versions, concurrent
writers, readers during commits, vacuum, history, restore and migration; on local disk and on a moto
S3 server process. Tables are read back through deltalake, Polars and DuckDB, never our own listing.

The partition lease is not taken here: these tests exercise the last line of defence, the Delta commit,
as if the lease had been bypassed (or broken by hand while its run still lived).
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import time
import traceback

import duckdb
import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable
from deltalake.transaction import PostCommitHookProperties

from tests.tables import write_parquet_object, write_table
from xlmflow import delta, delta_schema, history, maintenance, part_files, partition, schemas, storage
from xlmflow.errors import ConfigError, FatalError
from xlmflow.manifest import MANIFEST_VERSION, manifest_uri, read_manifest
from xlmflow.ray_cluster.registry import main_schema, make_settings
from xlmflow.read import read_partition, read_version
from xlmflow.stats import file_stats

# the documents table of a run with lid (the default): the core's columns and lid's lang, lang_score
DOCUMENTS = main_schema(make_settings(inputs=("in",), out="out"))

DATE = "2026-11-01"


@pytest.fixture(params=["local", "s3"])
def out(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out")
    return storage.join(request.getfixturevalue("s3_bucket"), "curated")


def _commit(
    out: str, run: str, n_docs: int, n_rejects: int, base: dict | None = None, date: str = DATE
) -> dict:
    """Write one run's documents and rejects files and commit them (what a run's commit does)."""
    docs = pa.table(
        {
            "doc_id": [f"{run}-{i}" for i in range(n_docs)],
            "text": ["x"] * n_docs,
            "lang": ["eng_Latn"] * n_docs,
            "lang_score": pa.array([1.0] * n_docs, pa.float32()),
            "n_chars": pa.array([1] * n_docs, pa.int32()),
            "source": ["s"] * n_docs,
            "source_row": list(range(n_docs)),
            "lang_hint": [None] * n_docs,
            "meta": ["{}"] * n_docs,
        },
        schema=DOCUMENTS,
    )
    rej = schemas.rejects_table(
        [schemas.make_reject("s", n_docs + i, "empty_text", f"{run}") for i in range(n_rejects)]
    )
    parts = {n: write_table(out, n, date, run, t) for n, t in (("documents", docs), ("rejects", rej))}
    files = {n: [f] for n, (f, _) in parts.items()}
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "date": date,
        "run_id": run,
        "config_hash": f"cfg-{run[:8]}",
        "files": files,
        "counts": {"input_rows": n_docs + n_rejects, "documents": n_docs, "rejects": n_rejects},
    }
    if base is None:
        base = delta.snapshot(out, list(parts))
    return partition.commit_tables(out, date, files, {n: s for n, (_, s) in parts.items()}, base, manifest)


def _run_hex(i: int) -> str:
    return f"{i:08x}" + "0" * 24


def _opts(out: str) -> dict | None:
    return delta.storage_options(delta.table_uri(out, "documents"))


def _ids(table) -> set[str]:  # noqa: ANN001
    return set(pa.table(table).column("doc_id").to_pylist())


def test_commit_force_and_versions_any_engine_reads(out):
    a = _commit(out, _run_hex(1), 30, 3)
    assert a["tables"] == {"documents": 1, "rejects": 1}  # version 0 is the table's creation
    uri = delta.table_uri(out, "documents")
    dt = DeltaTable(uri, storage_options=_opts(out))
    assert dt.protocol().min_reader_version == 1 and dt.protocol().min_writer_version == 2
    assert dt.metadata().partition_columns == ["date"]
    # deltalake, Polars and DuckDB (over the pyarrow dataset) read exactly the committed rows
    assert _ids(dt.to_pyarrow_table()) == {f"{_run_hex(1)}-{i}" for i in range(30)}
    frame = pl.read_delta(uri, storage_options=_opts(out))
    assert frame.height == 30 and set(frame["date"].unique()) == {DATE}
    con = duckdb.connect()
    con.register("docs", dt.to_pyarrow_dataset())
    assert con.sql("select count(*) from docs where date = '2026-11-01'").fetchall()[0][0] == 30

    # a --force run: a new version replaces the date's files; the old version stays readable by number
    b = _commit(out, _run_hex(2), 50, 5)
    assert b["tables"] == {"documents": 2, "rejects": 2}
    assert read_partition(out, "documents", DATE).num_rows == 50
    assert _ids(DeltaTable(uri, version=1, storage_options=_opts(out)).to_pyarrow_table()) == {
        f"{_run_hex(1)}-{i}" for i in range(30)
    }
    assert pl.read_delta(uri, version=2, storage_options=_opts(out)).height == 50
    # what a plain glob sees: both runs' files (removed-but-not-vacuumed), i.e. 80 rows, not 50
    assert len(storage.list_files(part_files.partition_dir(out, "documents", DATE))) == 2

    # commit metadata carries the run's accounting; history lists both runs for the date
    runs = history.runs_of(out, DATE)
    assert [(r["run_id"], r["operation"], r["current"]) for r in runs] == [
        (_run_hex(1), "write", False),
        (_run_hex(2), "write", True),
    ]
    assert runs[1]["tables"] == {"documents": 2, "rejects": 2}
    assert runs[1]["counts"] == {"input_rows": 55, "documents": 50, "rejects": 5}


def test_other_dates_commit_concurrently_without_conflict(tmp_path):
    out = str(tmp_path / "out")
    _commit(out, _run_hex(1), 5, 1, date="2026-11-01")
    base = delta.snapshot(out, ["documents", "rejects"])
    _commit(out, _run_hex(2), 6, 1, date="2026-11-02")  # lands after `base` was read
    m = _commit(out, _run_hex(3), 7, 1, base=base, date="2026-11-03")  # a different date: no conflict
    assert m["tables"] == {"documents": 3, "rejects": 3}
    for date, n in (("2026-11-01", 5), ("2026-11-02", 6), ("2026-11-03", 7)):
        assert read_partition(out, "documents", date).num_rows == n


def _racer(out: str, run: str, n: int, base: dict, barrier, results, env: dict) -> None:  # noqa: ANN001
    os.environ.update(env)
    try:
        barrier.wait(60)
        _commit(out, run, n, 1, base=base)
        results.put((run, "ok", ""))
    except Exception as exc:  # noqa: BLE001 - reported to the test
        results.put((run, type(exc).__name__, str(exc) + traceback.format_exc()))


def test_two_concurrent_force_runs_one_complete_version(out):
    _commit(out, _run_hex(1), 10, 1)
    base = delta.snapshot(out, ["documents", "rejects"])  # both racers started from this snapshot
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    procs = [
        ctx.Process(target=_racer, args=(out, _run_hex(i), 20 + i, base, barrier, results, env))
        for i in (2, 3)
    ]
    for p in procs:
        p.start()
    got = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    ok = [g for g in got if g[1] == "ok"]
    lost = [g for g in got if g[1] != "ok"]
    assert len(ok) == 1 and len(lost) == 1, got
    assert lost[0][1] == "CommitConflictError", lost[0][2]
    assert f"committed at version 2 by run {ok[0][0]}" in lost[0][2]
    winner = ok[0][0]
    m = read_manifest(out, DATE)
    assert m["run_id"] == winner and m["tables"] == {"documents": 2, "rejects": 2}
    # the latest version of every table holds the winner's files only, and nothing else was committed
    for name in ("documents", "rejects"):
        dt = DeltaTable(delta.table_uri(out, name), storage_options=_opts(out))
        assert dt.version() == 2
        assert {f["path"].split("/")[-1][5:13] for f in delta.partition_files(dt, DATE)} == {winner[:8]}
    assert _ids(read_partition(out, "documents", DATE)) == {
        f"{winner}-{i}" for i in range(int(winner[7]) + 20)
    }
    # the loser committed nothing, and removed the files it had written
    loser = lost[0][0][:8]
    assert not [u for u in storage.list_files(out) if f"part-{loser}" in u]


def _writer(out: str, rounds: int, env: dict, results) -> None:  # noqa: ANN001
    os.environ.update(env)
    try:
        for k in range(2, rounds + 2):
            _commit(out, _run_hex(k), 20 + 10 * (k % 2), k % 2 + 1)
            time.sleep(0.05)
        results.put("done")
    except Exception:  # noqa: BLE001
        results.put(traceback.format_exc())


def test_reader_on_pinned_snapshot_sees_old_or_new_never_a_mix(out):
    """A reader looping through the manifest while runs commit: each read is one run's complete
    partition (ids, row count, and its rejects from the same run), and it sees more than one run."""
    _commit(out, _run_hex(1), 30, 2)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    w = ctx.Process(target=_writer, args=(out, 6, env, results))
    w.start()
    seen = set()
    deadline = time.monotonic() + 180
    while w.is_alive() and time.monotonic() < deadline:
        m = read_manifest(out, DATE)
        docs = read_version(out, "documents", DATE, m["tables"]["documents"])
        rej = read_version(out, "rejects", DATE, m["tables"]["rejects"])
        k = int(m["run_id"][:8], 16)
        run = m["run_id"]
        n = 20 + 10 * (k % 2) if k > 1 else 30
        assert _ids(docs) == {f"{run}-{i}" for i in range(n)}, (k, docs.num_rows)
        assert set(pa.table(rej).column("detail").to_pylist()) == {run}
        assert rej.num_rows == (k % 2 + 1 if k > 1 else 2)
        seen.add(k)
    w.join(60)
    assert results.get(timeout=5) == "done"
    assert len(seen) >= 2, seen


def test_vacuum_keeps_retained_versions_and_held_partitions(tmp_path):
    from xlmflow.lease import PartitionLease

    out = str(tmp_path / "out")
    a = _commit(out, _run_hex(1), 10, 1)
    _commit(out, _run_hex(2), 12, 1)
    debris = part_files.partition_dir(out, "documents", DATE) + "/part-0000dead-00000.parquet"
    storage.write_bytes(debris, b"never committed")
    a_files = [storage.join(out, f["path"]) for fs in a["files"].values() for f in fs]

    assert maintenance.vacuum(out, retain_hours=1) == {"documents": {}, "rejects": {}}
    assert all(os.path.exists(p) for p in a_files)
    # a run holds the date: no retention under an hour, and its date is skipped at any retention
    lease = PartitionLease(out, DATE, "f" * 32, ttl=60).acquire(5)
    try:
        with pytest.raises(ConfigError, match="hold partitions 2026-11-01"):
            maintenance.vacuum(out, retain_hours=0)
    finally:
        lease.release()
    removed = maintenance.vacuum(out, retain_hours=0)
    assert sorted([*removed["documents"], *removed["rejects"]]) == sorted(
        p.split("/", 1)[1] for fs in a["files"].values() for p in [f["path"] for f in fs]
    )
    assert not any(os.path.exists(p) for p in a_files)
    assert os.path.exists(debris)  # never committed: the next run of the date removes it, not vacuum
    assert read_partition(out, "documents", DATE).num_rows == 12


def test_restore_brings_back_a_run_in_every_table(out):
    _commit(out, _run_hex(1), 10, 1)
    _commit(out, _run_hex(2), 12, 2)
    m = maintenance.restore(out, DATE, _run_hex(1))
    assert m["run_id"] == _run_hex(1) and m["tables"] == {"documents": 3, "rejects": 3}
    assert read_manifest(out, DATE)["tables"] == m["tables"]
    assert _ids(read_partition(out, "documents", DATE)) == {f"{_run_hex(1)}-{i}" for i in range(10)}
    assert read_partition(out, "rejects", DATE).num_rows == 1
    runs = history.runs_of(out, DATE)
    assert [(r["operation"], r["run_id"][:8], r["current"]) for r in runs] == [
        ("write", "00000001", False),
        ("write", "00000002", False),
        ("restore", "00000001", True),
    ]
    with pytest.raises(ConfigError, match="xlmflow history"):
        maintenance.restore(out, DATE, "nosuchrun")
    assert [(r["date"], r["run_id"], r["operation"], r["tables"]) for r in history.current_runs(out)] == [
        (DATE, _run_hex(1), "restore", {"documents": 3, "rejects": 3})
    ]

    # what other tools show (delta-rs here; Spark's DESCRIBE HISTORY reads the same commitInfo): each
    # commit of the date, the restore included, is a replaceWhere overwrite of it, with the run's
    # figures in userMetadata; the restored files keep their statistics
    for name in ("documents", "rejects"):
        table = DeltaTable(delta.table_uri(out, name), storage_options=_opts(out))
        hist = sorted(table.history(), key=lambda h: h["version"])
        assert [h["operation"] for h in hist] == ["CREATE TABLE", "WRITE", "WRITE", "WRITE"]
        for h in hist[1:]:
            assert h["operationParameters"]["mode"] == "Overwrite", h
            assert json.loads(h["operationParameters"]["predicate"]) == [f"date = '{DATE}'"]
            assert h["isBlindAppend"] is False and h["readVersion"] == h["version"] - 1
        shown = [json.loads(h["userMetadata"]) for h in hist[1:]]
        assert [(u["operation"], u["run_id"], u["date"], u["config_hash"]) for u in shown] == [
            ("write", _run_hex(1), DATE, "cfg-00000001"),
            ("write", _run_hex(2), DATE, "cfg-00000002"),
            ("restore", _run_hex(1), DATE, "cfg-00000001"),
        ]
        assert shown[1]["counts"] == {"input_rows": 14, "documents": 12, "rejects": 2}
        assert shown[2]["replaced_run"] == _run_hex(2) and shown[2]["counts"] == shown[0]["counts"]
        files = delta.partition_files(table, DATE)
        assert files and all(json.loads(f["stats"])["minValues"]["source_row"] >= 0 for f in files)


def _three_languages(out: str) -> None:
    """A partition of three part files, one language each (deu_Latn in part 1), committed."""
    langs = ["eng_Latn", "deu_Latn", "fra_Latn"]
    files = []
    for i, lang in enumerate(langs):
        n = 4 + i
        docs = pa.table(
            {
                "doc_id": [f"{lang}-{k:03d}" for k in range(n)],
                "text": ["x" * 40] * n,  # longer than a statistics prefix
                "lang": [lang] * n,
                "lang_score": pa.array([0.5 + k / 100 for k in range(n)], pa.float32()),
                "n_chars": pa.array([40] * n, pa.int32()),
                "source": ["s"] * n,
                "source_row": list(range(10 * i, 10 * i + n)),
                "lang_hint": [None] * (n - 1) + ["de"],
                "meta": ["{}"] * n,
            },
            schema=DOCUMENTS,
        )
        files.append(write_table(out, "documents", DATE, _run_hex(1), docs, index=i)[0])
    delta_schema.ensure_table(out, "documents", DOCUMENTS)
    delta.replace_files(out, "documents", DATE, files, None, {"run_id": _run_hex(1)})


def test_tables_of_processors_not_registered_here_are_maintained_too(tmp_path):
    """History, restore and vacuum go by the tables on disk: a plug-in's table (its plug-in not
    installed in this process) is listed, restored and vacuumed like the built-in ones."""
    out = str(tmp_path / "out")
    name = "plugin_scores"
    for i, n in ((1, 3), (2, 5)):
        run = _run_hex(i)
        f, schema = write_table(out, name, DATE, run, pa.table({"doc_id": [f"{run}-{k}" for k in range(n)]}))
        manifest = {"manifest_version": MANIFEST_VERSION, "date": DATE, "run_id": run, "files": {name: [f]}}
        partition.commit_tables(out, DATE, {name: [f]}, {name: schema}, delta.snapshot(out, [name]), manifest)
    assert delta.table_names(out) == [name]
    assert [r["tables"] for r in history.runs_of(out, DATE)] == [{name: 1}, {name: 2}]
    maintenance.restore(out, DATE, _run_hex(1))
    assert read_partition(out, name, DATE).num_rows == 3
    removed = maintenance.vacuum(out, retain_hours=0)
    assert list(removed) == [name] and [p.split("/")[-1][:13] for p in removed[name]] == ["part-00000002"]


def test_file_statistics_let_engines_skip_files(tmp_path):
    """Each add action carries numRecords, minValues, maxValues and nullCount taken from the footer
    the writer wrote; a reader of the log then skips the part files whose ranges exclude a filter."""
    out = str(tmp_path / "out")
    _three_languages(out)

    entry = delta.read_log_entry(out, "documents", 1)
    stats = [json.loads(a["add"]["stats"]) for a in entry if "add" in a]
    assert stats[1] == {
        "numRecords": 5,
        "minValues": {
            "doc_id": "deu_Latn-000",
            "text": "x" * 32,  # a prefix is still a lower bound; the max is left out rather than cut
            "lang": "deu_Latn",
            "lang_score": 0.5,
            "n_chars": 40,
            "source": "s",
            "source_row": 10,
            "lang_hint": "de",
            "meta": "{}",
        },
        "maxValues": {
            "doc_id": "deu_Latn-004",
            "lang": "deu_Latn",
            "lang_score": pytest.approx(0.54),
            "n_chars": 40,
            "source": "s",
            "source_row": 14,
            "lang_hint": "de",
            "meta": "{}",
        },
        "nullCount": {
            "doc_id": 0,
            "text": 0,
            "lang": 0,
            "lang_score": 0,
            "n_chars": 0,
            "source": 0,
            "source_row": 0,
            "lang_hint": 4,
            "meta": 0,
        },
    }
    # delta-rs prunes on the log's statistics: one file of three holds deu_Latn, two hold ids >= "eng"
    dt = DeltaTable(delta.table_uri(out, "documents"))
    assert len(dt.file_uris()) == 3
    kept = dt.file_uris(file_pruning_predicate="lang = 'deu_Latn'")
    assert [u.rsplit("/", 1)[-1] for u in kept] == ["part-00000001-00001.parquet"]
    assert len(dt.file_uris(file_pruning_predicate="doc_id >= 'eng'")) == 2
    assert len(dt.file_uris(file_pruning_predicate="source_row > 12")) == 2
    assert len(dt.file_uris(file_pruning_predicate="lang_hint IS NOT NULL")) == 3


def test_duckdb_delta_scan_skips_files_on_lang(tmp_path):
    """DuckDB's own Delta reader (the `delta` extension, loaded from its PyPI package) reads the
    statistics too: it scans one file of three for lang = 'deu_Latn'."""
    import glob
    import re

    ext_pkg = pytest.importorskip("duckdb_extension_delta")
    ext = glob.glob(
        os.path.join(os.path.dirname(ext_pkg.__file__), "extensions", "*", "delta.duckdb_extension")
    )
    out = str(tmp_path / "out")
    _three_languages(out)
    con = duckdb.connect()
    con.sql(f"LOAD '{ext[0]}'")
    query = f"select count(*) from delta_scan('{delta.table_uri(out, 'documents')}') where lang = 'deu_Latn'"
    assert con.sql(query).fetchall() == [(5,)]
    plan = "\n".join(row[1] for row in con.sql(f"explain analyze {query}").fetchall())
    assert re.search(r"Scanning Files: 1/3\b", plan), plan


def test_file_stats_nested_columns_and_timestamps(tmp_path):
    """The stats JSON as the Delta protocol has it: struct fields nested, list columns left out,
    timestamps in milliseconds (the min rounded down, the max up), several row groups combined."""
    import datetime as dt_

    import pyarrow.parquet as pq

    t = pa.table(
        {
            "s": pa.array(
                [{"p": 1, "q": "z"}, None, {"p": 3, "q": None}],
                pa.struct([("p", pa.int32()), ("q", pa.string())]),
            ),
            "l": pa.array([[1.0], [2.0], None], pa.list_(pa.float32())),
            "ts": pa.array(
                [dt_.datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=dt_.UTC)] * 3, pa.timestamp("us", "UTC")
            ),
            "b": [True, False, None],
        }
    )
    path = str(tmp_path / "f.parquet")
    with pq.ParquetWriter(path, t.schema) as w:
        w.write_table(t)
        w.write_table(t.slice(0, 1))
    assert json.loads(file_stats(pq.read_metadata(path), t.schema)) == {
        "numRecords": 4,
        "minValues": {"s": {"p": 1, "q": "z"}, "ts": "2026-01-01T00:00:00.123Z"},
        "maxValues": {"s": {"p": 3, "q": "z"}, "ts": "2026-01-01T00:00:00.124Z"},
        "nullCount": {"s": {"p": 1, "q": 2}, "ts": 0, "b": 1},
    }


def test_schema_evolves_only_by_nullable_columns(tmp_path):
    """Columns are added (nullable), or left out of a run's files (read as null); never retyped."""
    out = str(tmp_path / "out")
    _commit(out, _run_hex(1), 3, 1)
    wider = DOCUMENTS.append(pa.field("topic", pa.string()))
    delta_schema.ensure_table(out, "documents", wider)
    latest = DeltaTable(delta.table_uri(out, "documents")).to_pyarrow_table()
    assert latest.column("topic").null_count == 3  # files written before the column read it as null
    assert "topic" not in read_partition(out, "documents", DATE).column_names  # the pinned version
    retyped = wider.set(wider.get_field_index("n_chars"), pa.field("n_chars", pa.string()))
    with pytest.raises(ConfigError, match="'n_chars' is"):
        delta_schema.ensure_table(out, "documents", retyped)
    # a run without the processor that adds `topic` writes files without it: they read it as null
    delta_schema.ensure_table(out, "documents", DOCUMENTS)
    _commit(out, _run_hex(2), 4, 2)
    again = read_partition(out, "documents", DATE)
    assert again.num_rows == 4 and again.column("topic").null_count == 4


def test_old_layout_is_refused_then_migrated_in_place(tmp_path):
    out = str(tmp_path / "out")
    run = _run_hex(7)
    files = {}
    for name, table in (
        ("documents", pa.table({"doc_id": ["a", "b"]})),
        ("rejects", schemas.rejects_table([schemas.make_reject("s", 2, "empty_text", "")])),
    ):
        rel = f"{name}/date={DATE}/part-{run[:8]}-00000.parquet"
        n = write_parquet_object(storage.join(out, rel), table)
        files[name] = [{"path": rel, "rows": table.num_rows, "bytes": n}]
    old = {"manifest_version": 1, "date": DATE, "run_id": run, "files": files, "counts": {"documents": 2}}
    storage.write_json(manifest_uri(out, DATE), old)

    with pytest.raises(ConfigError, match=f"xlmflow migrate --out {out}"):
        delta.refuse_legacy(out)
    assert maintenance.migrate(out) == {"converted": {"documents": 1, "rejects": 1}, "rewritten": {}}
    delta.refuse_legacy(out)  # converted: runs may go on
    m = read_manifest(out, DATE)
    assert m["tables"] == {"documents": 1, "rejects": 1}
    migrated = DeltaTable(delta.table_uri(out, "documents"))
    assert _ids(migrated.to_pyarrow_table()) == {"a", "b"}
    # recorded as an overwrite of the whole table (no predicate), after the table's creation
    h = migrated.history(1)[0]
    assert (h["operation"], h["operationParameters"]["mode"]) == ("WRITE", "Overwrite")
    assert "predicate" not in h["operationParameters"]
    assert json.loads(h["userMetadata"]) == {"operation": "migrate"}
    stats = json.loads(delta.partition_files(migrated, DATE)[0]["stats"])  # from the files' footers
    assert (stats["numRecords"], stats["minValues"], stats["maxValues"]) == (
        2,
        {"doc_id": "a"},
        {"doc_id": "b"},
    )
    assert read_partition(out, "rejects", DATE).num_rows == 1
    assert [r["operation"] for r in history.runs_of(out, DATE)] == ["migrate"]
    # a later run replaces the migrated partition like any other
    _commit(out, _run_hex(8), 4, 1)
    assert read_partition(out, "documents", DATE).num_rows == 4


def test_crash_between_table_commits_is_realigned_by_the_next_run(tmp_path):
    """A --force run killed after committing `documents` but before `rejects` and its manifest: the
    manifest still pins the old run everywhere; the next (no-op) run puts the old files back in
    `documents`, so single-table readers agree with the manifest again."""
    out = str(tmp_path / "out")
    a = _commit(out, _run_hex(1), 10, 1)
    crashed = _run_hex(2)
    f, _ = write_table(
        out, "documents", DATE, crashed, read_partition(out, "documents", DATE).drop(["date"]).slice(0, 4)
    )
    delta.replace_files(out, "documents", DATE, [f], a["tables"]["documents"], {"run_id": crashed})
    assert DeltaTable(delta.table_uri(out, "documents")).to_pyarrow_table().num_rows == 4
    assert read_manifest(out, DATE)["run_id"] == _run_hex(1)  # readers of the manifest: unaffected

    assert partition.realign_tables(out, DATE, read_manifest(out, DATE)) == ["documents"]
    latest = DeltaTable(delta.table_uri(out, "documents")).to_pyarrow_table()
    assert _ids(latest) == {f"{_run_hex(1)}-{i}" for i in range(10)}
    assert partition.realign_tables(out, DATE, read_manifest(out, DATE)) == []  # nothing left to do
    # the crashed run's file is referenced by a table version: kept for vacuum, not removed as debris
    assert partition.remove_debris(out, DATE, a, "cfg") == 0


def _crash_after_first_table_commit(out: str, committed: dict) -> str:
    """A --force run killed after committing `documents` and before `rejects` and its manifest."""
    crashed = _run_hex(2)
    rows = read_partition(out, "documents", DATE).drop(["date"]).slice(0, 4)
    f, _ = write_table(out, "documents", DATE, crashed, rows)
    delta.replace_files(out, "documents", DATE, [f], committed["tables"]["documents"], {"run_id": crashed})
    return crashed


def test_vacuum_never_deletes_what_a_manifest_pins(tmp_path):
    """After such a crash the manifest pins `documents` files that the table's latest version has
    removed; vacuum at any retention keeps them, so readers through the manifest and the next run's
    realignment still find them."""
    out = str(tmp_path / "out")
    a = _commit(out, _run_hex(1), 10, 1)
    _crash_after_first_table_commit(out, a)
    pinned = [storage.join(out, f["path"]) for f in a["files"]["documents"]]

    assert maintenance.vacuum(out, retain_hours=0) == {"documents": {}, "rejects": {}}
    assert all(os.path.exists(p) for p in pinned)
    assert _ids(read_partition(out, "documents", DATE)) == {f"{_run_hex(1)}-{i}" for i in range(10)}
    assert partition.realign_tables(out, DATE, read_manifest(out, DATE)) == ["documents"]
    latest = DeltaTable(delta.table_uri(out, "documents")).to_pyarrow_table()
    assert _ids(latest) == {f"{_run_hex(1)}-{i}" for i in range(10)}
    # once the table holds the pinned files again, the crashed run's file is superseded: vacuum takes it
    assert list(maintenance.vacuum(out, retain_hours=0)["documents"]) == [
        f"date={DATE}/part-00000002-00000.parquet"
    ]
    history = DeltaTable(delta.table_uri(out, "documents")).history()
    vacuums = [h for h in history if "VACUUM" in h["operation"]]
    assert [(h["operation"], h["operationMetrics"].get("numDeletedFiles")) for h in vacuums] == [
        ("VACUUM END", 1),
        ("VACUUM START", None),
    ]  # the vacuum that deleted nothing recorded nothing
    assert vacuums[1]["operationMetrics"]["numFilesToDelete"] == 1


def test_realign_refuses_files_that_are_gone(tmp_path):
    """Pinned files deleted behind xlmflow's back (by hand, or an older vacuum): the realignment must
    not point the table at them, which would break every reader of its latest version."""
    out = str(tmp_path / "out")
    a = _commit(out, _run_hex(1), 10, 1)
    _crash_after_first_table_commit(out, a)
    for f in a["files"]["documents"]:
        os.unlink(storage.join(out, f["path"]))
    with pytest.raises(partition.PinnedFilesGoneError, match="version 1, which the manifest pins, lost 1"):
        partition.realign_tables(out, DATE, read_manifest(out, DATE))
    assert DeltaTable(delta.table_uri(out, "documents")).to_pyarrow_table().num_rows == 4  # unchanged


@pytest.fixture
def proxied(moto_server, s3_bucket):
    """An output prefix on S3 whose clients in this process (delta-rs, s3fs, boto3) all go through a
    fault-injecting proxy in front of the moto server."""
    import s3fs

    from tests.fault_proxy import fault_proxy

    old = os.environ["AWS_ENDPOINT_URL"]
    with fault_proxy(moto_server) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            yield proxy, storage.join(s3_bucket, "curated")
        finally:
            os.environ["AWS_ENDPOINT_URL"] = old
            s3fs.S3FileSystem.clear_instance_cache()


def _latest_rows(out: str, name: str) -> int:
    """What a plain Delta reader of the latest version gets (it fails on a referenced file that is gone)."""
    return DeltaTable(delta.table_uri(out, name), storage_options=_opts(out)).to_pyarrow_table().num_rows


@pytest.mark.parametrize("fault", ["after", "drop-after"])
@pytest.mark.parametrize("table", ["documents", "rejects"])
def test_a_commit_whose_answer_was_lost_is_read_back(proxied, table, fault):
    """The commit PUT reached S3 but the client saw a 500 or a cut connection; its retry then met the
    commit it had just made (412). That commit is this run's: the run succeeds and keeps its files."""
    proxy, out = proxied
    _commit(out, _run_hex(1), 10, 1)
    proxy.fail(fault, method="PUT", path=rf"/{table}/_delta_log/\d{{20}}\.json", times=1)
    b = _commit(out, _run_hex(2), 12, 2)
    assert proxy.hits == 1
    assert b["tables"] == {"documents": 2, "rejects": 2}
    assert read_manifest(out, DATE)["run_id"] == _run_hex(2)
    assert (_latest_rows(out, "documents"), _latest_rows(out, "rejects")) == (12, 2)
    assert [r["run_id"] for r in history.runs_of(out, DATE) if r["current"]] == [_run_hex(2)]


@pytest.mark.parametrize("fault", ["after", "drop-after"])
def test_a_manifest_whose_answer_was_lost_is_read_back(proxied, fault):
    """The manifest PUT (the commit point) landed and its answer was lost."""
    proxy, out = proxied
    proxy.fail(fault, method="PUT", path=r"/_manifests/date", times=1)  # not the archive copy (_runs/)
    m = _commit(out, _run_hex(1), 10, 1)
    assert proxy.hits == 1
    assert read_manifest(out, DATE) == json.loads(json.dumps(m, default=str))
    assert _latest_rows(out, "documents") == 10


@pytest.mark.parametrize("fault", ["after", "drop-after"])
def test_a_lease_write_whose_answer_was_lost_is_read_back(proxied, fault):
    """Taking and renewing the partition's lease are conditional PUTs too: a lost answer must not make
    the run wait for itself, or think another run took its lease."""
    from xlmflow.lease import PartitionLease, show

    proxy, out = proxied
    lease = PartitionLease(out, DATE, "a" * 32, ttl=60)
    proxy.fail(fault, method="PUT", path=r"/_leases/", times=1)
    lease.acquire(timeout=5)
    try:
        assert proxy.hits == 1 and show(out, DATE).body["run_id"] == "a" * 32
        proxy.fail(fault, method="PUT", path=r"/_leases/", times=1)
        lease.check()  # the fence before a commit
        assert proxy.hits == 1 and lease.lost is None
    finally:
        proxy.passthrough()
        lease.release()
    assert show(out, DATE) is None


def test_history_restore_vacuum_commands(tmp_path, capsys):
    from xlmflow.cli import main

    out = str(tmp_path / "out")
    assert main(["history", "--out", out]) == 0
    assert capsys.readouterr().out.strip() == "no committed partitions"
    _commit(out, _run_hex(1), 10, 1)
    _commit(out, _run_hex(2), 12, 2)
    _commit(out, _run_hex(3), 7, 1, date="2026-11-02")
    assert main(["history", "--out", out]) == 0  # every date's current run, one line each
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["date", "run", "id"] and len(lines) == 3
    assert lines[1].split()[:3] == [DATE, _run_hex(2), "write"] and " 12 " in lines[1]
    assert lines[1].endswith("documents=2 rejects=2")
    assert lines[2].split()[:3] == ["2026-11-02", _run_hex(3), "write"] and " 7 " in lines[2]
    assert main(["history", "--out", out, "--date", DATE]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["time", "(UTC)", "run"]
    assert _run_hex(1) in lines[1] and "replaced" in lines[1] and "documents=1 rejects=1" in lines[1]
    assert _run_hex(2) in lines[2] and "current" in lines[2] and " 12 " in lines[2]
    assert main(["restore", "--out", out, "--date", DATE, "--run", _run_hex(1)]) == 0
    assert f"run {_run_hex(1)} is current again (documents=4 rejects=4)" in capsys.readouterr().out
    assert main(["history", "--out", out]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:3] == [DATE, _run_hex(1), "restore"]
    assert main(["vacuum", "--out", out, "--retain-hours", "0", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    doc = f"date={DATE}/part-{_run_hex(2)[:8]}-00000.parquet"
    size = os.path.getsize(os.path.join(out, "documents", doc))
    assert f"documents/{doc}  {size} bytes" in lines  # each file the vacuum would delete, and its size
    assert f"documents: would delete 1 files ({size} bytes) removed from the table more than 0 h ago" in lines
    rej = os.path.getsize(os.path.join(out, "rejects", doc))
    assert lines[-1] == f"total: would delete 2 files ({size + rej} bytes)"
    assert os.path.exists(os.path.join(out, "documents", doc))
    assert main(["restore", "--out", out, "--date", DATE, "--run", "feedbeef"]) == 2  # a config error
    assert "xlmflow history" in capsys.readouterr().err
    assert main(["migrate", "--out", out]) == 2
    assert "nothing to migrate" in capsys.readouterr().err


def _log_props(out: str, **props: str) -> None:
    for n in ("documents", "rejects"):
        # as delta-rs' own writers would, but without their post-commit hooks (this commit is not ours)
        DeltaTable(delta.table_uri(out, n)).alter.set_table_properties(
            props, post_commithook_properties=PostCommitHookProperties(False, False)
        )


def _log_names(out: str, name: str = "documents") -> list[str]:
    return sorted(os.listdir(os.path.join(out, name, "_delta_log")))


def test_log_checkpoints_and_cleanup_keep_every_pinned_version_readable(tmp_path):
    """Checkpoints every `delta.checkpointInterval` commits; a failed checkpoint costs the committed run
    nothing; log entries are removed by vacuum only, never those of a version a manifest pins, even
    when the table's owner set a log retention of zero (delta-rs' own post-commit cleanup would drop
    them); vacuum records its commits as other Delta writers do."""
    out = str(tmp_path / "out")
    dates = [f"2026-11-0{d}" for d in range(1, 5)]
    _commit(out, _run_hex(1), 1, 1, date=dates[0])  # version 1 (0 creates the table)
    _log_props(out, **{"delta.checkpointInterval": "3", "delta.logRetentionDuration": "interval 0 seconds"})
    # the checkpoint due at version 6 cannot be written (a directory is in its way): a warning only
    os.makedirs(os.path.join(out, "documents", "_delta_log", f"{6:020d}.checkpoint.parquet"))
    warned = logging.Handler(logging.WARNING)
    seen: list[str] = []
    warned.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("xlmflow.delta").addHandler(warned)
    disabled = logging.root.manager.disable  # a CLI error earlier in this process turns logging off
    logging.disable(logging.NOTSET)
    rows = {dates[0]: 1}
    try:
        for i, date in enumerate(dates[1:] + dates[1:3] + dates[1:2], start=2):  # versions 3 to 8
            rows[date] = i
            m = _commit(out, _run_hex(i), i, 1, date=date)
            assert m["tables"] == {"documents": i + 1, "rejects": i + 1}
    finally:
        logging.getLogger("xlmflow.delta").removeHandler(warned)
        logging.disable(disabled)
    assert any("documents: no checkpoint written" in w for w in seen), seen
    log_dir = os.path.join(out, "documents", "_delta_log")
    cps = [n for n in _log_names(out) if ".checkpoint." in n and os.path.isfile(os.path.join(log_dir, n))]
    assert cps == [f"{3:020d}.checkpoint.parquet", f"{7:020d}.checkpoint.parquet"]
    assert delta.last_checkpoint(out, "documents") == 7

    def readable() -> None:
        for date in dates:  # through the manifest, i.e. at the version it pins
            assert read_partition(out, "documents", date).num_rows == rows[date]

    readable()
    assert maintenance.vacuum(out, retain_hours=0, dry_run=True)["documents"]  # a dry run drops nothing
    assert f"{1:020d}.json" in _log_names(out)  # still pinned by the first date

    # the first date rerun: its pin moves on; the oldest pin is now version 5 (the fourth date's)
    _commit(out, _run_hex(20), 2, 1, date=dates[0])
    rows[dates[0]] = 2
    removed = maintenance.vacuum(out, retain_hours=0)
    assert len(removed["documents"]) == 4  # each superseded file of the four dates
    ops = [h["operation"] for h in DeltaTable(delta.table_uri(out, "documents")).history(limit=2)]
    assert ops == ["VACUUM END", "VACUUM START"]
    names = _log_names(out)
    assert f"{2:020d}.json" not in names and f"{3:020d}.json" in names  # from checkpoint 3 on
    readable()
    assert DeltaTable(delta.table_uri(out, "documents"), version=5).version() == 5
    with pytest.raises(FatalError, match="vacuum removed the log of table documents up to its version 1"):
        maintenance.restore(out, dates[0], _run_hex(1))


def test_run_time_log_reads_start_at_the_last_checkpoint(tmp_path):
    """The debris check, the no-op rerun and the commit's conflict check read a table's log from its
    last checkpoint (or the run's snapshot) on: with every commit before that checkpoint unreadable, a
    rerun still tells debris from committed files and commits."""
    out = str(tmp_path / "out")
    other = "2026-11-02"
    a = _commit(out, _run_hex(1), 2, 1)  # version 1
    _log_props(out, **{"delta.checkpointInterval": "2"})  # version 2
    b = _commit(out, _run_hex(2), 3, 1)  # 3: a checkpoint; run 1's files are removed (tombstones)
    _commit(out, _run_hex(3), 1, 1, date=other)  # 4
    _commit(out, _run_hex(4), 1, 1, date=other)  # 5: a checkpoint
    for n in ("documents", "rejects"):
        log_dir = os.path.join(out, n, "_delta_log")
        last = json.loads(open(os.path.join(log_dir, "_last_checkpoint")).read())["version"]
        assert last == 5
        for v in range(last):
            with open(os.path.join(log_dir, f"{v:020d}.json"), "w") as fh:
                fh.write("not a commit\n")
    debris = part_files.partition_dir(out, "documents", DATE) + "/part-0000dead-00000.parquet"
    storage.write_bytes(debris, b"never committed")
    kept = [storage.join(out, f["path"]) for m in (a, b) for fs in m["files"].values() for f in fs]

    # a plain rerun: nothing to realign, the debris goes, both runs' files stay (vacuum's to decide)
    assert partition.realign_tables(out, DATE, read_manifest(out, DATE)) == []
    assert partition.cleanup_partition(out, DATE, read_manifest(out, DATE)) == 1
    assert not os.path.exists(debris) and all(os.path.exists(p) for p in kept)
    # a --force rerun: its debris check and commit
    assert partition.remove_debris(out, DATE, read_manifest(out, DATE), "cfg") == 0
    c = _commit(out, _run_hex(5), 4, 1)
    assert c["tables"] == {"documents": 6, "rejects": 6}
    assert read_partition(out, "documents", DATE).num_rows == 4
    assert all(os.path.exists(p) for p in kept)


def test_a_replacement_never_adds_and_removes_one_path_in_a_commit(tmp_path):
    """Engines that do not order the actions within a commit would read a path both added and removed
    as either; a replacement by the same files commits nothing, one keeping some files removes only the
    others."""
    out = str(tmp_path / "out")
    _commit(out, _run_hex(1), 3, 0)
    table = delta.open_table(out, "documents")
    first = delta.files_for_commit(out, "documents", DATE, table.version())
    assert delta.replace_files(out, "documents", DATE, first, table.version(), {"run_id": "r"}) == (
        table.version()
    )
    assert delta.open_table(out, "documents").version() == table.version()

    extra = write_table(
        out,
        "documents",
        DATE,
        _run_hex(2),
        read_version(out, "documents", DATE, table.version()).drop(["date"]),
    )[0]
    both = delta.replace_files(out, "documents", DATE, first + [extra], table.version(), {"run_id": "r"})
    only_new = delta.replace_files(out, "documents", DATE, [extra], both, {"run_id": "r"})
    for v in (both, only_new):
        actions = delta.read_log_entry(out, "documents", v)
        added = {a["add"]["path"] for a in actions if "add" in a}
        removed = {a["remove"]["path"] for a in actions if "remove" in a}
        assert not added & removed, (v, actions)
    assert read_version(out, "documents", DATE, both).num_rows == 6
    assert read_version(out, "documents", DATE, only_new).num_rows == 3
    assert {f["path"] for f in delta.files_for_commit(out, "documents", DATE, only_new)} == {extra["path"]}


def test_vacuum_deletes_files_superseded_long_before_the_last_checkpoint(tmp_path):
    """Vacuum finds what to delete through tombstones; a checkpoint must not drop those of files that
    were superseded long ago (or kept longer because a manifest pinned them)."""
    from deltalake.transaction import RemoveAction

    out = str(tmp_path / "out")
    _commit(out, _run_hex(1), 3, 0)
    table = delta.open_table(out, "documents")
    old = [
        f["path"].split("/", 1)[1] for f in delta.files_for_commit(out, "documents", DATE, table.version())
    ]
    rows = read_version(out, "documents", DATE, table.version()).drop(["date"])
    new = write_table(out, "documents", DATE, _run_hex(2), rows)[0]
    ten_days_ago = int((time.time() - 10 * 86400) * 1000)
    table.create_write_transaction(
        [RemoveAction(p, True, ten_days_ago, None, {"date": DATE}) for p in old]
        + [delta.add_action(new["path"].split("/", 1)[1], new["bytes"], DATE, ten_days_ago, new["rows"])],
        mode="append",
        schema=table.schema(),
        partition_by=["date"],
    )
    manifest = read_manifest(out, DATE)
    version = delta.open_table(out, "documents").version()
    storage.write_json(
        manifest_uri(out, DATE), {**manifest, "tables": {**manifest["tables"], "documents": version}}
    )
    delta.open_table(out, "documents").create_checkpoint()

    assert sorted(maintenance.vacuum(out, retain_hours=24)["documents"]) == sorted(old)
    assert not any(os.path.exists(os.path.join(out, "documents", p)) for p in old)
    assert maintenance.vacuum(out, retain_hours=24)["documents"] == {}  # gone files are not listed again


def test_a_file_with_nan_scores_gets_no_score_bounds(tmp_path):
    """Parquet's min/max leave NaN out, but engines ordering NaN above every number would skip the file
    on `score > x`: the writer gives such a column no bounds, and other columns keep theirs."""
    t = pa.table({"doc_id": ["a", "b"], "score": pa.array([0.2, float("nan")], pa.float32())})
    out = str(tmp_path / "out")
    f = write_table(out, "qe", DATE, _run_hex(1), t)[0]
    stats = json.loads(f["stats"])
    assert "score" not in stats["minValues"] and "score" not in stats["maxValues"]
    assert stats["minValues"]["doc_id"] == "a" and stats["nullCount"]["score"] == 0
