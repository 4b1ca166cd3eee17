"""`xlmflow vacuum|history|restore|migrate`: maintain the output Delta tables."""

from __future__ import annotations

import argparse

from xlmflow.lease_cli import out_root
from xlmflow.settings import LOCK_TIMEOUT


def add_tables_parsers(sub) -> None:  # noqa: ANN001 - argparse's private subparsers type
    v = sub.add_parser("vacuum", help="delete superseded files older than the retention (all tables)")
    v.add_argument("--retain-hours", type=float, default=None, help="default 168 (7 days, as Delta's)")
    v.add_argument(
        "--dry-run",
        action="store_true",
        help="list the files (and bytes) that would be deleted, delete nothing",
    )
    v.set_defaults(func=_vacuum)
    h = sub.add_parser(
        "history", help="each date's current run; with --date, every run committed for that date"
    )
    h.add_argument("--date", help="partition date YYYY-MM-DD (default: one line per date)")
    h.set_defaults(func=_history)
    r = sub.add_parser("restore", help="make an earlier run's output the date's current partition again")
    r.add_argument("--date", required=True, help="partition date YYYY-MM-DD")
    r.add_argument("--run", required=True, help="run id, as `xlmflow history` lists it")
    r.add_argument(
        "--lock-timeout", type=float, default=LOCK_TIMEOUT, help="seconds to wait for a run of the date"
    )
    r.set_defaults(func=_restore)
    m = sub.add_parser(
        "migrate", help="update an output written by earlier versions (Parquet directories, fixed-size lists)"
    )
    m.set_defaults(func=_migrate)
    for p in (v, h, r, m):
        p.add_argument("--out", required=True, help="output root: a directory or s3://bucket/prefix")


def _out(a: argparse.Namespace) -> str:
    return out_root(a.out)


def _vacuum(a: argparse.Namespace) -> int:
    from xlmflow import maintenance  # lazy: 0.2-0.3 s of imports (pyarrow, fsspec) the CLI start does without

    hours = maintenance.DEFAULT_RETAIN_HOURS if a.retain_hours is None else a.retain_hours
    removed = maintenance.vacuum(_out(a), hours, dry_run=a.dry_run)
    verb = "would delete" if a.dry_run else "deleted"
    for name, files in removed.items():
        if a.dry_run:
            for path, size in files.items():
                print(f"{name}/{path}  {size} bytes")
        print(
            f"{name}: {verb} {len(files)} files ({sum(files.values())} bytes) removed from the table "
            f"more than {hours:g} h ago"
        )
    if not removed:
        print("no tables to vacuum")
    else:
        n = sum(len(f) for f in removed.values())
        print(f"total: {verb} {n} files ({sum(sum(f.values()) for f in removed.values())} bytes)")
    return 0


def _history(a: argparse.Namespace) -> int:
    from xlmflow import history  # lazy: 0.2-0.3 s of imports (pyarrow, fsspec) the CLI start does without
    from xlmflow.partition import Partition  # lazy: as above

    if a.date is None:
        return _dates(history.current_runs(_out(a)))
    runs = Partition(_out(a), a.date).history()
    if not runs:
        print(f"partition {a.date}: no committed runs")
        return 0
    print(
        f"{'time (UTC)':25} {'run id':32} {'operation':9} {'state':10} {'documents':>9} {'rejects':>7}  versions"
    )
    for r in runs:
        c = r["counts"] or {}
        state = "current" if r["current"] else ("replaced" if r["complete"] else "incomplete")
        versions = " ".join(f"{n}={v}" for n, v in r["tables"].items())
        print(
            f"{r['time']:25} {r['run_id']:32} {r['operation']:9} {state:10} "
            f"{c.get('documents', ''):>9} {c.get('rejects', ''):>7}  {versions}"
        )
    return 0


def _dates(rows: list[dict]) -> int:
    if not rows:
        print("no committed partitions")
        return 0
    print(
        f"{'date':10} {'run id':32} {'operation':9} {'time (UTC)':19} {'documents':>9} {'rejects':>7}  versions"
    )
    for r in rows:
        c = r["counts"]
        versions = " ".join(f"{n}={v}" for n, v in r["tables"].items())
        print(
            f"{r['date']:10} {r['run_id'] or '':32} {r['operation']:9} {r['time']:19} "
            f"{c.get('documents', ''):>9} {c.get('rejects', ''):>7}  {versions}"
        )
    return 0


def _restore(a: argparse.Namespace) -> int:
    from xlmflow import maintenance  # lazy: 0.2-0.3 s of imports (pyarrow, fsspec) the CLI start does without

    m = maintenance.restore(_out(a), a.date, a.run, lock_timeout=a.lock_timeout)
    versions = " ".join(f"{n}={v}" for n, v in m["tables"].items())
    print(f"partition {a.date}: run {a.run} is current again ({versions})")
    return 0


def _migrate(a: argparse.Namespace) -> int:
    from xlmflow import maintenance  # lazy: 0.2-0.3 s of imports (pyarrow, fsspec) the CLI start does without

    done = maintenance.migrate(_out(a))
    for name, n in done["converted"].items():
        print(f"{name}: {n} files committed as version 1 of a Delta table (files kept in place)")
    for name, n in done["rewritten"].items():
        print(f"{name}: {n} files with fixed-size lists rewritten as lists (old versions keep theirs)")
    return 0
