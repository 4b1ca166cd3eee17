"""Backfill: one `corpus-YYYY-MM-DD` partition run per date, at most N at a time, a status table at the end.

Prefect OSS has no native backfill. With a deployment name, each date becomes its own flow run of that
deployment (`run_deployment`), executed by the work pool's workers; without one, each date runs here as
a subflow. A per-partition lock (a Prefect global concurrency limit of 1, keyed by output and date)
makes two backfills, or a backfill and the daily run, take turns on a date instead of computing it
twice at once; whoever comes second finds the partition committed and skips it.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.futures import as_completed

from xlmflow.errors import ConfigError, FatalError
from xlmflow.flows.corpus import corpus_flow
from xlmflow.flows.params import (
    MAX_CONCURRENT,
    POLL_INTERVAL,
    job_settings,
    partition_lock,
    render_input,
    tag_run,
)
from xlmflow.manifest import read_manifest
from xlmflow.settings import JobSettings, check_date
from xlmflow.tasks import fingerprint

STATUSES = ("committed", "skipped", "inputs_changed", "no_input", "failed")


def date_range(start: str, end: str) -> list[str]:
    """Every date from start to end, both included, as 'YYYY-MM-DD'."""
    d0 = dt.date.fromisoformat(check_date(start, "start"))
    d1 = dt.date.fromisoformat(check_date(end, "end"))
    if d1 < d0:
        raise ConfigError(f"--end {end} is before --start {start}")
    return [(d0 + dt.timedelta(days=i)).isoformat() for i in range((d1 - d0).days + 1)]


def _counts(manifest: dict | None) -> dict:
    """Top-level numbers of a manifest (rows, rejects, files, ...), whatever the corpus flow records."""
    if not manifest:
        return {}
    counts = manifest.get("counts") if isinstance(manifest.get("counts"), dict) else manifest
    return {k: v for k, v in counts.items() if isinstance(v, int) and not isinstance(v, bool)}


@task(name="partition", task_run_name="partition-{date}")
def run_partition(
    date: str, params: dict, deployment: str | None, poll_interval: float = POLL_INTERVAL
) -> dict:
    """Run one date (as a deployment run or a subflow) and report its status; never raises.

    `params`: the partition flow's parameters but the date (inputs, settings as JSON, missing_input)."""
    out, force = params["settings"]["out"], params["settings"].get("force", False)
    t0 = time.monotonic()
    row: dict = {"date": date, "status": "failed", "flow_run": None, "error": None, "counts": {}}
    try:
        with partition_lock(out, date):
            manifest = None if force else read_manifest(out, date)
            changed = manifest is not None and fingerprint.changes(
                manifest.get("input_fingerprint"), fingerprint.current(params["inputs"])
            )
            if changed:  # reported, not recomputed and not a failure: --force recomputes it
                row.update(status="inputs_changed", counts=_counts(manifest), error="; ".join(changed))
            elif manifest is not None:
                row.update(status="skipped", counts=_counts(manifest))
            elif deployment is None:
                res = corpus_flow(**params, date=date)
                row.update(status=res["status"], counts=_counts(res.get("manifest")))
            else:
                # lazy: Prefect takes seconds to import; the CLI starts it after its checks
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
                    manifest = read_manifest(out, date)
                    # a completed run that left no manifest had no input (missing_input="skip")
                    row.update(status="committed" if manifest else "no_input", counts=_counts(manifest))
    except Exception as exc:  # a failed date must not stop the others; the table reports it
        row["error"] = f"{type(exc).__name__}: {exc}"
    row["duration_s"] = round(time.monotonic() - t0, 1)
    return row


def _check_deployment(name: str) -> None:
    """Fail before any date runs when the partition deployment is missing."""

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
    input_template: str | None = None,
    settings: JobSettings | None = None,
    start: str | None = None,
    end: str | None = None,
    max_concurrent: int = MAX_CONCURRENT,
    deployment: str | None = None,
    poll_interval: float = POLL_INTERVAL,
    **legacy: Any,
) -> list[dict]:
    """Process every date of [start, end]; fail (after all dates ran) if any date failed."""
    job = job_settings(settings, legacy, "backfill")
    if not (input_template and start and end):
        raise ConfigError("flow 'backfill' needs input_template, start and end")
    if max_concurrent < 1:
        raise ConfigError(f"max_concurrent must be >= 1, got {max_concurrent}")
    dates = date_range(start, end)
    render_input(input_template, dates[0])  # validates the template before anything starts
    tag_run(["backfill", *(f"date:{d}" for d in dates)], job)  # a date's filter finds its backfills too
    if deployment is not None:
        _check_deployment(deployment)
    if deployment is None and job.ray_address is None and max_concurrent > 1:
        # in-process subflows share one Python process and so one Ray driver: run them one by one
        get_run_logger().warning("no deployment and no ray_address: running dates one at a time")
        max_concurrent = 1
    # a date with no input is reported, not failed
    common = {"settings": job.model_dump(mode="json", exclude={"resolved"}), "missing_input": "skip"}

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
