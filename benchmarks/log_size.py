"""Commit time and no-op rerun time of tables with a long history against fresh tables, same run.

Three output roots, local directories: a fresh one; one whose `documents` and `rejects` tables hold
`--commits` commits each (365 dates, each committed again and again as daily runs, backfills and
`--force` reruns do; one small part file per commit, a manifest per date), built by committing
through `xlmflow.partition.commit_tables` as runs do, without running the pipeline; and one with the same
365 dates committed once each (the long root's table state with a short log), which separates the
cost of the log's length from that of the table's size.

On each root, `--reps` times, rotating which root goes first:
- commit: what a run of a new date does around its data files: the tables' snapshot, the debris check
  (`remove_debris`), the table commits and the manifest (`commit_tables`), then `cleanup_partition`;
- no-op rerun: what a plain rerun of a committed date does: read the manifest, `realign_tables`,
  `cleanup_partition` (the debris check) — for the date just committed and for the first date
  (whose manifest pins a version from the start of the history).

    .venv/bin/python benchmarks/log_size.py --commits 2000 --reps 15 [--checkpoint-interval N] [--long DIR]

`--long DIR`: measure on a long-history root built by an earlier run (it prints its path) instead of
building one; the medians and minimums of the reps are both printed (the minimum is the steadier on a
shared machine).

Results: BENCHMARKS.md ("A long table history").
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

START = dt.date(2025, 1, 1)
NAMES = ("documents", "rejects")
COMMIT_OPTIONS: dict = {}  # --checkpoint-interval, passed on to commit_tables when given


def _tables():  # noqa: ANN202
    import pyarrow as pa

    from xlmflow import schemas
    from xlmflow.ray_cluster.registry import main_schema, make_settings

    doc = {
        "text": "a short text",
        "lang": "eng_Latn",
        "lang_score": 0.99,
        "n_chars": 12,
        "source": "bench.jsonl",
    }
    rows = [
        {**doc, "doc_id": f"doc-{i:05d}", "source_row": i, "lang_hint": None, "meta": "{}"} for i in range(20)
    ]
    lid_run = main_schema(make_settings(inputs=("bench.jsonl",), out="out"))  # lid's columns included
    docs = pa.Table.from_pylist(rows, schema=lid_run)
    rejects = schemas.rejects_table([schemas.make_reject("bench.jsonl", 0, "empty_text", "")])
    return {"documents": docs, "rejects": rejects}


def _write(out: str, date: str, tables: dict) -> tuple[dict, dict]:
    from tests.tables import write_table
    from xlmflow import manifest as mf

    run = uuid.uuid4().hex
    parts = {n: write_table(out, n, date, run, t) for n, t in tables.items()}
    manifest = {
        "manifest_version": mf.MANIFEST_VERSION,
        "date": date,
        "run_id": run,
        "config_hash": "bench",
        "files": {n: [f] for n, (f, _) in parts.items()},
        "counts": {"documents": tables["documents"].num_rows, "rejects": tables["rejects"].num_rows},
    }
    return manifest, {n: s for n, (_, s) in parts.items()}


def commit(out: str, date: str, tables: dict) -> float:
    """A run's work around its data files: the snapshot and debris check at its start, the commits and
    cleanup at its end (writing the data files in between is left out of the figure)."""
    from xlmflow import delta, partition
    from xlmflow import manifest as mf

    t = time.perf_counter()
    base = delta.snapshot(out, list(NAMES))
    partition.remove_debris(out, date, mf.read_manifest(out, date), "bench")
    secs = time.perf_counter() - t
    manifest, schemas_ = _write(out, date, tables)
    t = time.perf_counter()
    partition.commit_tables(out, date, manifest["files"], schemas_, base, manifest, **COMMIT_OPTIONS)
    partition.cleanup_partition(out, date, manifest, debris=False)
    return secs + time.perf_counter() - t


def noop(out: str, date: str) -> float:
    """A plain rerun of a committed date (its inputs unchanged): nothing is computed or committed."""
    from xlmflow import manifest as mf
    from xlmflow import partition

    t = time.perf_counter()
    existing = mf.read_manifest(out, date)
    assert existing is not None
    assert partition.realign_tables(out, date, existing) == []
    partition.cleanup_partition(out, date, existing)
    return time.perf_counter() - t


def build(out: str, commits: int, tables: dict) -> float:
    from xlmflow import delta, partition

    t = time.perf_counter()
    for i in range(commits):
        date = (START + dt.timedelta(days=i % 365)).isoformat()
        manifest, schemas_ = _write(out, date, tables)
        base = delta.snapshot(out, list(NAMES))
        partition.commit_tables(out, date, manifest["files"], schemas_, base, manifest, **COMMIT_OPTIONS)
        if i % 250 == 249:
            print(f"  built {i + 1} commits per table ({time.perf_counter() - t:.0f}s)", flush=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--commits", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--checkpoint-interval", type=int, default=None, help="default: the run's default")
    ap.add_argument("--long", default=None, help="a long-history root built by an earlier run")
    a = ap.parse_args()
    if a.checkpoint_interval:
        COMMIT_OPTIONS["checkpoint_interval"] = a.checkpoint_interval
    tables = _tables()
    roots = {"fresh": os.path.join(tempfile.mkdtemp(prefix="log-bench-"), "out")}
    if a.long:
        roots["long"] = a.long
    else:
        roots["long"] = os.path.join(tempfile.mkdtemp(prefix="log-bench-"), "out")
        secs = build(roots["long"], a.commits, tables)
        print(f"long history: {a.commits} commits per table built in {secs:.0f}s at {roots['long']}")
    # the same 365 dates, each committed once: the long root's table state with a short log
    roots["365"] = os.path.join(tempfile.mkdtemp(prefix="log-bench-"), "out")
    build(roots["365"], 365, tables)
    first = START.isoformat()
    commit(roots["fresh"], first, tables)  # the fresh root's first date, committed once
    results: dict = {}
    # new dates for the commits: after every date the long root has (an earlier measurement's included)
    have = [n[len("date=") : -len(".json")] for n in os.listdir(os.path.join(roots["long"], "_manifests"))]
    after = max(dt.date.fromisoformat(d) for d in have if d[:1].isdigit())
    names = os.listdir(os.path.join(roots["long"], "documents", "_delta_log"))
    print(
        f"long history: {sum(n.endswith('.json') for n in names)} commits in documents/_delta_log "
        f"({sum('checkpoint.parquet' in n for n in names)} checkpoints), dates up to {after}"
    )
    sides = ["fresh", "365", "long"]
    for rep in range(a.reps):
        date = (after + dt.timedelta(days=1 + rep)).isoformat()
        for side in sides[rep % 3 :] + sides[: rep % 3]:
            out = roots[side]
            row = {
                "commit": commit(out, date, tables),
                "no-op rerun (date just committed)": noop(out, date),
                "no-op rerun (first date)": noop(out, first),
            }
            for k, v in row.items():
                results.setdefault((k, side), []).append(v)
            print(f"rep {rep} {side:5} " + ", ".join(f"{k} {v:.3f}s" for k, v in row.items()), flush=True)
    print(f"\nlocal directory; {a.reps} reps, seconds: median (minimum)")
    print(
        "| | fresh table | 365 dates, 365 commits | long history | long / fresh | long / 365 commits |\n"
        "|---|---|---|---|---|---|"
    )
    for k in ("commit", "no-op rerun (date just committed)", "no-op rerun (first date)"):
        f, m, g = (results[(k, side)] for side in sides)
        fm, mm, gm = (statistics.median(x) for x in (f, m, g))
        print(
            f"| {k} | {fm:.3f} ({min(f):.3f}) | {mm:.3f} ({min(m):.3f}) | {gm:.3f} ({min(g):.3f}) | "
            f"{gm / fm:.2f}× ({min(g) / min(f):.2f}×) | {gm / mm:.2f}× ({min(g) / min(m):.2f}×) |"
        )


if __name__ == "__main__":
    main()
