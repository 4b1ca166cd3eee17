"""The partition flow: ingest (split tasks, dedup) -> process on Ray actors -> commit (writer tasks, Delta
commits, manifest) -> report. The driver plans and commits; the data stays on the cluster."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any, Literal

from prefect import flow, get_run_logger

from xlmflow.errors import ConfigError
from xlmflow.manifest import run_models
from xlmflow.settings import JobSettings


def _run_name() -> str:
    from prefect.runtime import flow_run

    date = flow_run.parameters.get("date") or dt.datetime.now(dt.UTC).date().isoformat()
    return f"corpus-{date}"


@flow(name="corpus", flow_run_name=_run_name, log_prints=True)
def corpus_flow(
    inputs: list[str] | None = None,
    settings: JobSettings | None = None,
    date: str | None = None,
    missing_input: Literal["fail", "skip"] = "fail",
    **legacy: Any,
) -> dict:
    """Process one date partition of a corpus; a committed partition is skipped unless settings.force.

    The whole run holds the partition's lease (xlmflow.lease), so a second run of the same partition
    (plain, forced or a no-op rerun, from any entry point) waits instead of racing this one.
    """
    from flows.params import job_settings, tag_run
    from ray_cluster.processors.registry import run_settings
    from xlmflow import storage
    from xlmflow.lease import PartitionLease

    logger = get_run_logger()
    job = job_settings(settings, legacy, "corpus")
    if not inputs:
        raise ConfigError("flow 'corpus' needs `inputs` (files, directories or globs)")
    settings = run_settings(job, inputs, date)
    storage.check_output_root(settings.out)  # scheduled runs do not pass through the CLI's checks
    day = settings.date.isoformat()
    tag_run([f"date:{day}"], settings)
    if missing_input == "skip" and not _any_input(settings.inputs):
        logger.info("partition %s: no input at %s", day, list(settings.inputs))
        return {"date": day, "out": settings.out, "manifest": None, "status": "no_input"}
    run_id = uuid.uuid4().hex
    lease = PartitionLease(settings.out, day, run_id, settings.lease_ttl)
    lease.acquire(settings.lock_timeout, on_wait=logger.warning)
    try:
        return _run_partition(settings, lease, run_id, logger)
    finally:
        lease.release()


def _run_partition(settings, lease, run_id: str, logger) -> dict:  # noqa: ANN001
    """The partition run proper; called with the lease held."""
    from tasks import collect, fingerprint, report, steps
    from tasks.shard import staging_root
    from xlmflow import delta

    day = settings.date.isoformat()
    result = {"date": day, "out": settings.out, "manifest": None}
    delta.refuse_legacy(settings.out)
    existing = collect.read_manifest(settings.out, day)
    if existing and not settings.force:
        diff = fingerprint.changes(existing.get("input_fingerprint"), fingerprint.current(settings.inputs))
        if diff:
            logger.warning(
                "partition %s was committed (run %s) from inputs that have changed since: %s; "
                "pass force to recompute it",
                day,
                existing.get("run_id"),
                "; ".join(diff),
            )
            return {**result, "status": "inputs_changed", "manifest": existing, "changes": diff}
        try:
            realigned = collect.realign_tables(
                settings.out, day, existing
            )  # a --force run that crashed mid-commit
        except collect.PinnedFilesGoneError as exc:
            # the committed rows are gone; the inputs are unchanged, so computing again restores them
            logger.warning("%s; computing the partition again from its unchanged inputs", exc)
        else:
            if realigned:
                logger.warning(
                    "partition %s: tables %s held rows of a run that crashed before its manifest; they "
                    "hold the committed run's rows again",
                    day,
                    ", ".join(realigned),
                )
            removed = collect.cleanup_partition(
                settings.out, day, existing
            )  # leftovers of a crash after commit
            logger.info(
                "partition %s is already committed (run %s); nothing to do — pass force to recompute%s",
                day,
                existing.get("run_id"),
                f" (removed {removed} stray files)" if removed else "",
            )
            return {**result, "status": "skipped", "manifest": existing}
    # the tables' versions now: the commit refuses if another run commits this date meanwhile
    table_versions = delta.snapshot(settings.out, collect.datasets_for(settings))
    # files a failed or killed run left behind (ours alone to remove: we hold the partition)
    removed = collect.remove_debris(settings.out, day, existing, settings.config_hash())
    if removed:
        logger.info("partition %s: removed %d files left by an earlier failed run", day, removed)
    t0 = time.perf_counter()
    run = {
        "run_id": run_id,
        "code_version": _code_version(),
        "started_at": dt.datetime.now(dt.UTC).isoformat(),
        "flow_run_id": _flow_run_id(),
        "table_versions_at_start": table_versions,
    }
    staging = staging_root(settings.out, day, settings.config_hash())
    stages: dict[str, float] = {}

    def timed(stage: str, fn, *args):  # noqa: ANN001, ANN202 - stage timings, logged and kept in the manifest
        t = time.perf_counter()
        res = fn(*args)
        stages[stage] = round(time.perf_counter() - t, 3)
        logger.info("stage %s took %.1fs", stage, stages[stage])
        return res

    # the run's artifacts are created by the flow itself, so the UI lists them under the flow run
    read_id = report.create_progress_artifact(day, "ingest", f"input rows read for {day}")
    progress_id = report.create_progress_artifact(day, "progress", f"documents processed for {day}")
    ing = timed("ingest", steps.ingest_inputs, settings, staging, read_id)
    # the listing the splits were planned from, taken before reading: a file that changes while we
    # read shows up as changed next time
    run["input_fingerprint"] = ing["listing"]
    processed = timed("process", steps.process_shards, ing, settings, progress_id)
    shards, done, _failed, infos, content = processed
    run["actors"] = infos
    run["models"] = run_models(infos)
    secs = time.perf_counter() - t0
    accepted = sum(s["accepted"] for s in content)
    chars = sum(s["chars"] for s in shards)
    run["throughput"] = {
        "seconds": round(secs, 2),
        "docs_per_s": round(accepted / secs, 1),
        "chars_per_s": round(chars / secs, 1),
    }
    # commit's own time is logged; it cannot be in the manifest it writes
    run["stages"] = {**stages, **{f"ingest_{k}": v for k, v in ing["seconds"].items()}}
    _test_pause_before_commit(logger)
    lease.check()  # fence: a run that lost its lease while stalled must not write into the partition
    manifest = timed("commit", steps.commit_partition, settings, ing, processed, run, lease.check)
    timed("report", report.publish_report, {**manifest, "status": "committed"}, settings.out)
    return {**result, "status": "committed", "manifest": manifest}


def _test_pause_before_commit(logger) -> None:  # noqa: ANN001
    """Tests hold a run just before its commit while a gate file exists, to make runs overlap for sure."""
    import os

    gate = os.environ.get("XLMFLOW_TEST_PAUSE_BEFORE_COMMIT")
    if not gate or not os.path.exists(gate):
        return
    logger.warning("test pause before commit (until %s is removed)", gate)
    deadline = time.monotonic() + 600
    while os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)


def _any_input(inputs: tuple[str, ...]) -> bool:
    from xlmflow import storage

    for i in inputs:
        fs, path = storage.fs_for(i)
        if any(c in path for c in "*?[") and fs.glob(path):
            return True
        if fs.exists(path) and (fs.isfile(path) or fs.find(path)):
            return True
    return False


def _flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    return str(flow_run.id) if flow_run.id else None


def _code_version() -> str:
    import subprocess
    from pathlib import Path

    import xlmflow

    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except Exception:  # noqa: BLE001
        sha = ""
    return f"{xlmflow.__version__}+{sha}" if sha else xlmflow.__version__
