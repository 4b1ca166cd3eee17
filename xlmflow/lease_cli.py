"""`xlmflow lease show|break`: see who holds a partition, or free one whose run is gone."""

from __future__ import annotations

import argparse

from xlmflow import lease
from xlmflow.ray_cluster.registry import make_settings


def add_lease_parser(sub) -> None:  # noqa: ANN001 - argparse's private subparsers type
    p = sub.add_parser("lease", help="show or break a partition's lease (one writer per partition)")
    ls = p.add_subparsers(dest="lease_cmd", required=True)
    for name, fn, doc in (
        ("show", _show, "who holds the partition, since when, and whether the lease has expired"),
        ("break", _break, "remove the lease (only when its run is gone: a live owner then fails its commit)"),
    ):
        c = ls.add_parser(name, help=doc)
        c.add_argument("--out", required=True, help="output root: a directory or s3://bucket/prefix")
        c.add_argument("--date", required=True, help="partition date YYYY-MM-DD")
        c.set_defaults(func=fn)


def out_root(out: str, date: str | None = None) -> str:
    """The run's own spelling of --out (and `date` checked the way a run checks it, when given)."""
    return make_settings(inputs=(), out=out, **({"date": date} if date else {})).out


def _show(a: argparse.Namespace) -> int:
    seen = lease.show(out_root(a.out, a.date), a.date)
    if seen is None:
        print(f"partition {a.date}: no lease (no run holds it)")
        return 0
    state = "EXPIRED (the next run takes it over)" if seen.expired else "held"
    print(f"partition {a.date}: {state} by {seen.describe()}")
    return 0


def _break(a: argparse.Namespace) -> int:
    seen = lease.break_lease(out_root(a.out, a.date), a.date)
    if seen is None:
        print(f"partition {a.date}: no lease to break")
    else:
        print(f"partition {a.date}: broke the lease of {seen.describe()}")
    return 0
