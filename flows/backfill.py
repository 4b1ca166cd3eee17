"""Backfill: one `corpus-YYYY-MM-DD` partition run per date, at most N at a time, a status table at the end.

Prefect OSS has no native backfill. With a deployment name, each date becomes its own flow run of that
deployment (`run_deployment`), executed by the work pool's workers; without one, each date runs here as
a subflow. A per-partition lock (a Prefect global concurrency limit of 1, keyed by output and date)
makes two backfills, or a backfill and the daily run, take turns on a date instead of computing it
twice at once; whoever comes second finds the partition committed and skips it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prefect import flow, get_run_logger, task

from xlmflow import storage
from xlmflow.errors import ConfigError, FatalError

STATUSES = ("committed", "skipped", "inputs_changed", "no_input", "failed")
MODEL_PARAMS = ("ner_model", "embed_model", "qe_model", "qe_method")


def date_range(start: str, end: str) -> list[str]:
    """Every date from start to end, both included, as 'YYYY-MM-DD'."""
    try:
        d0, d1 = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    except ValueError as exc:
        raise ConfigError(f"dates must be YYYY-MM-DD: {exc}") from exc
    if d1 < d0:
        raise ConfigError(f"--end {end} is before --start {start}")
    return [(d0 + dt.timedelta(days=i)).isoformat() for i in range((d1 - d0).days + 1)]


def manifest_uri(out: str, date: str) -> str:
    """Where the corpus flow commits a partition (written last, so its presence means committed)."""
    return storage.join(out, "_manifests", f"date={date}.json")


def lock_name(out: str, date: str) -> str:
    """Concurrency-limit name of one partition (limit names may not contain '/', so the output is hashed)."""
    return f"xlmflow-partition-{hashlib.sha1(out.encode()).hexdigest()[:12]}-{date}"


@contextmanager
def partition_lock(out: str, date: str) -> Iterator[None]:
    """Hold the partition's global concurrency slot (limit 1) while it is computed; leases are renewed."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists

    name = lock_name(out, date)
    with get_client(sync_client=True) as client:
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        except ObjectAlreadyExists:  # another run of this partition created it first
            pass
    with concurrency(name, occupy=1, strict=True):
        yield


def _counts(manifest: dict | None) -> dict:
    """Top-level numbers of a manifest (rows, rejects, files, ...), whatever the corpus flow records."""
    if not manifest:
        return {}
    counts = manifest.get("counts") if isinstance(manifest.get("counts"), dict) else manifest
    return {k: v for k, v in counts.items() if isinstance(v, int) and not isinstance(v, bool)}


def _read_manifest(out: str, date: str) -> dict | None:
    uri = manifest_uri(out, date)
    return storage.read_json(uri) if storage.exists(uri) else None


@task(name="partition", task_run_name="partition-{date}")
def run_partition(date: str, params: dict, deployment: str | None, poll_interval: float = 5.0) -> dict:
    """Run one date (as a deployment run or a subflow) and report its status; never raises."""
    from tasks import fingerprint

    out, force = params["out"], params.get("force", False)
    t0 = time.monotonic()
    row: dict = {"date": date, "status": "failed", "flow_run": None, "error": None, "counts": {}}
    try:
        with partition_lock(out, date):
            manifest = None if force else _read_manifest(out, date)
            changed = manifest is not None and fingerprint.changes(
                manifest.get("input_fingerprint"), fingerprint.current(params["inputs"])
            )
            if changed:  # reported, not recomputed and not a failure: --force recomputes it
                row.update(status="inputs_changed", counts=_counts(manifest), error="; ".join(changed))
            elif manifest is not None:
                row.update(status="skipped", counts=_counts(manifest))
            elif deployment is None:
                from flows.corpus import corpus_flow

                res = corpus_flow(**params, date=date)
                row.update(status=res["status"], counts=_counts(res.get("manifest")))
            else:
                from prefect.deployments import run_deployment

                fr = run_deployment(
                    deployment,
                    parameters={**params, "date": date},
                    flow_run_name=f"corpus-{date}",
                    tags=["backfill", f"date:{date}"],
                    poll_interval=poll_interval,
                    timeout=None,  # wait here; the slot of this date is held until the run ends
                )
                row["flow_run"] = fr.name
                if fr.state is None or not fr.state.is_completed():
                    state = fr.state.name if fr.state else "unknown"
                    row["error"] = f"flow run {fr.name} ended {state}: {fr.state.message if fr.state else ''}"
                else:
                    manifest = _read_manifest(out, date)
                    # a completed run that left no manifest had no input (missing_input="skip")
                    row.update(status="committed" if manifest else "no_input", counts=_counts(manifest))
    except Exception as exc:  # a failed date must not stop the others; the table reports it
        row["error"] = f"{type(exc).__name__}: {exc}"
    row["duration_s"] = round(time.monotonic() - t0, 1)
    return row


def _check_deployment(name: str) -> None:
    """Fail before any date runs when the partition deployment is missing."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
        except ObjectNotFound as exc:
            raise ConfigError(
                f"deployment {name!r} not found on the Prefect server; create it with `xlmflow deploy` or "
                "`prefect deploy --all`, or leave out --deployment to run the dates in this process"
            ) from exc


def format_table(rows: list[dict]) -> str:
    """A plain-text table: date, status, counts, duration, error."""
    lines = [f"{'date':<10}  {'status':<14}  {'duration_s':>10}  counts / error"]
    for r in rows:
        detail = r["error"] or " ".join(f"{k}={v}" for k, v in sorted(r["counts"].items()))
        lines.append(f"{r['date']:<10}  {r['status']:<14}  {r['duration_s']:>10}  {detail}")
    return "\n".join(lines)


def _publish(rows: list[dict]) -> None:
    from prefect.artifacts import create_table_artifact

    table = [
        {
            "date": r["date"],
            "status": r["status"],
            "duration_s": r["duration_s"],
            "counts": ", ".join(f"{k}={v}" for k, v in sorted(r["counts"].items())),
            "error": r["error"] or "",
        }
        for r in rows
    ]
    create_table_artifact(table=table, key="backfill-status", description="Backfill: status per date")


@flow(name="backfill", flow_run_name="backfill-{start}-to-{end}")
def backfill_flow(
    input_template: str,
    out: str,
    start: str,
    end: str,
    max_concurrent: int = 2,
    force: bool = False,
    tasks: str = "lid",
    deployment: str | None = None,
    ray_address: str | None = None,
    actors: int | None = None,
    ner_model: str | None = None,
    embed_model: str | None = None,
    qe_model: str | None = None,
    qe_method: str = "regression",
    poll_interval: float = 5.0,
) -> list[dict]:
    """Process every date of [start, end]; fail (after all dates ran) if any date failed."""
    from prefect.futures import as_completed

    from flows.daily import render_input

    if max_concurrent < 1:
        raise ConfigError(f"max_concurrent must be >= 1, got {max_concurrent}")
    dates = date_range(start, end)
    render_input(input_template, dates[0])  # validates the template before anything starts
    if deployment is not None:
        _check_deployment(deployment)
    if deployment is None and ray_address is None and max_concurrent > 1:
        # in-process subflows share one Python process and so one Ray driver: run them one by one
        get_run_logger().warning("no deployment and no ray_address: running dates one at a time")
        max_concurrent = 1
    common = dict(
        out=out,
        tasks=tasks,
        force=force,
        ray_address=ray_address,
        actors=actors,
        ner_model=ner_model,
        embed_model=embed_model,
        qe_model=qe_model,
        qe_method=qe_method,
        missing_input="skip",
    )  # a date with no input is reported, not failed

    # a sliding window of at most max_concurrent dates in flight
    pending, running, rows = list(dates), set(), []
    while pending or running:
        while pending and len(running) < max_concurrent:
            d = pending.pop(0)
            running.add(
                run_partition.submit(
                    d, {**common, "inputs": [render_input(input_template, d)]}, deployment, poll_interval
                )
            )
        done = next(as_completed(list(running)))
        running.discard(done)
        rows.append(done.result())
    rows.sort(key=lambda r: r["date"])

    _publish(rows)
    tally = {s: n for s in STATUSES if (n := sum(r["status"] == s for r in rows))}
    get_run_logger().info("backfill %s..%s: %s (table: artifact backfill-status)", start, end, tally)
    failed = [r["date"] for r in rows if r["status"] == "failed"]
    if failed:
        raise FatalError(
            f"{len(failed)} of {len(rows)} date(s) failed: {', '.join(failed)}\n{format_table(rows)}"
        )
    return rows


def add_backfill_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `xlmflow backfill`."""
    parser.add_argument(
        "--input", required=True, help="input template with {date}, e.g. s3://raw/corpus/date={date}/"
    )
    parser.add_argument("--out", required=True, help="output root (local dir or s3://bucket/prefix)")
    parser.add_argument("--start", required=True, help="first date, YYYY-MM-DD")
    parser.add_argument("--end", required=True, help="last date, YYYY-MM-DD (included)")
    parser.add_argument("--max-concurrent", type=int, default=2, help="partition runs at a time (default 2)")
    parser.add_argument("--force", action="store_true", help="recompute committed partitions")
    parser.add_argument("--tasks", default="lid", help="comma-separated: lid,ner,embed,qe (default lid)")
    parser.add_argument(
        "--deployment",
        default=None,
        help="run each date as a flow run of this deployment (e.g. corpus/partition) on the "
        "work pool's workers; default: run dates in this process",
    )
    parser.add_argument("--ray-address", default=None, help="Ray cluster address for the partition runs")
    parser.add_argument("--actors", type=int, default=None, help="actors per partition run")
    parser.add_argument("--ner-model", default=None)
    parser.add_argument("--embed-model", default=None)
    parser.add_argument("--qe-model", default=None)
    parser.add_argument("--qe-method", default="regression", choices=["regression", "cosine"])
    parser.add_argument("--poll-interval", type=float, default=5.0, help="seconds between run status polls")


def backfill_main(ns: argparse.Namespace) -> int:
    """`xlmflow backfill`: 0 when every date is committed, skipped or has no input; 1 if any failed."""
    from flows.daily import render_input
    from xlmflow import reaper

    reaper.start()  # a killed backfill takes its temporary Prefect server and local Ray with it

    # bad dates or a template without {date} are a ConfigError for the CLI, before any run starts
    render_input(ns.input, date_range(ns.start, ns.end)[0])
    state = backfill_flow(
        input_template=ns.input,
        out=ns.out,
        start=ns.start,
        end=ns.end,
        max_concurrent=ns.max_concurrent,
        force=ns.force,
        tasks=ns.tasks,
        deployment=ns.deployment,
        ray_address=ns.ray_address,
        actors=ns.actors,
        ner_model=ns.ner_model,
        embed_model=ns.embed_model,
        qe_model=ns.qe_model,
        qe_method=ns.qe_method,
        poll_interval=ns.poll_interval,
        return_state=True,
    )
    if state.is_completed():
        print(format_table(state.result()))
        return 0
    print(f"backfill failed: {state.message}")  # the message carries the table of every date
    return 1
