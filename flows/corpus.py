"""The partition flow: ingest (split tasks, dedup) -> process on Ray actors -> commit (writer tasks, Delta
commits, manifest) -> report. The driver plans and commits; the data stays on the cluster."""

from __future__ import annotations

import datetime as dt
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

import xlmflow
from xlmflow import delta, faults, storage
from xlmflow.errors import ConfigError
from xlmflow.flows.params import job_settings, tag_run
from xlmflow.manifest import run_models
from xlmflow.partition import Partition, PinnedFilesGoneError
from xlmflow.ray_cluster.registry import run_settings
from xlmflow.records import IngestResult, ProcessResult, RunFacts
from xlmflow.settings import JobSettings
from xlmflow.tasks import collect, fingerprint, report, steps
from xlmflow.tasks.shard import staging_root


def _run_name() -> str:
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
    partition = Partition(settings.out, day, run_id, settings.lease_ttl, collect.partition_datasets(settings))
    with partition.held(settings.lock_timeout, on_wait=logger.warning):
        return _run_partition(settings, partition, logger)


def _run_partition(settings, partition: Partition, logger) -> dict:  # noqa: ANN001
    """The partition run proper: take the partition -> ingest -> process -> commit -> report."""
    result = {"date": partition.date, "out": settings.out, "manifest": None}
    delta.refuse_legacy(settings.out)
    existing = partition.manifest()
    if existing and not settings.force:
        done = _already_committed(settings, partition, existing, logger)
        if done is not None:
            return {**result, **done, "manifest": existing}
    # the tables' versions now: the commit refuses if another run commits this date meanwhile
    partition.snapshot(collect.datasets_for(settings))
    # files a failed or killed run left behind (ours alone to remove: we hold the partition)
    removed = partition.remove_debris(existing, settings.config_hash())
    if removed:
        logger.info("partition %s: removed %d files left by an earlier failed run", partition.date, removed)
    t0 = time.perf_counter()
    started_at = dt.datetime.now(dt.UTC).isoformat()
    stages = _Stages(logger)
    # the run's artifacts are created by the flow itself, so the UI lists them under the flow run
    read_id = report.create_progress_artifact(
        partition.date, "ingest", f"input rows read for {partition.date}"
    )
    progress_id = report.create_progress_artifact(
        partition.date, "progress", f"documents processed for {partition.date}"
    )
    staging = staging_root(settings.out, partition.date, settings.config_hash())
    ingested = stages.timed("ingest", steps.ingest_inputs, settings, staging, read_id)
    processed = stages.timed("process", steps.process_shards, ingested, settings, progress_id)
    facts = _facts(
        partition, started_at, ingested.record, processed, stages.seconds, time.perf_counter() - t0
    )
    faults.point("before_commit")
    partition.check()  # fence: a run that lost its lease while stalled must not write into the partition
    manifest = stages.timed("commit", steps.commit_outputs, settings, partition, ingested, processed, facts)
    stages.timed("report", report.publish_report, {**manifest, "status": "committed"}, settings.out)
    return {**result, "status": "committed", "manifest": manifest}


class _Stages:
    """Stage timings, logged and kept in the manifest."""

    def __init__(self, logger) -> None:  # noqa: ANN001
        self.logger, self.seconds = logger, {}

    def timed(self, stage: str, fn, *args):  # noqa: ANN001, ANN202
        t = time.perf_counter()
        res = fn(*args)
        self.seconds[stage] = round(time.perf_counter() - t, 3)
        self.logger.info("stage %s took %.1fs", stage, self.seconds[stage])
        return res


def _facts(
    partition: Partition,
    started_at: str,
    ingest: IngestResult,
    processed: ProcessResult,
    stages: dict[str, float],
    secs: float,
) -> RunFacts:
    """The run's facts for the manifest, once processing is done."""
    return RunFacts(
        run_id=partition.owner_id,
        code_version=_code_version(),
        started_at=started_at,
        flow_run_id=_flow_run_id(),
        table_versions_at_start=partition.base_versions,
        # the listing the splits were planned from, taken before reading: a file that changes while
        # we read shows up as changed next time
        input_fingerprint=ingest.listing,
        actors=processed.actors,
        models=run_models(processed.actors),
        throughput={
            "seconds": round(secs, 2),
            "docs_per_s": round(processed.accepted / secs, 1),
            "chars_per_s": round(processed.chars / secs, 1),
        },
        # commit's own time is logged; it cannot be in the manifest it writes
        stages={**stages, **{f"ingest_{k}": v for k, v in ingest.seconds.items()}},
    )


def _already_committed(settings, partition: Partition, existing: dict, logger) -> dict | None:  # noqa: ANN001
    """A plain rerun of a committed date: repair what a crash left and skip; None when the date must
    be computed again."""
    day = partition.date
    diff = fingerprint.changes(existing.get("input_fingerprint"), fingerprint.current(settings.inputs))
    if diff:
        logger.warning(
            "partition %s was committed (run %s) from inputs that have changed since: %s; "
            "pass force to recompute it",
            day,
            existing.get("run_id"),
            "; ".join(diff),
        )
        return {"status": "inputs_changed", "changes": diff}
    try:
        realigned = partition.realign(existing)  # a --force run that crashed mid-commit
    except PinnedFilesGoneError as exc:
        # the committed rows are gone; the inputs are unchanged, so computing again restores them
        logger.warning("%s; computing the partition again from its unchanged inputs", exc)
        return None
    if realigned:
        logger.warning(
            "partition %s: tables %s held rows of a run that crashed before its manifest; they "
            "hold the committed run's rows again",
            day,
            ", ".join(realigned),
        )
    removed = partition.cleanup(existing)  # leftovers of a crash after commit
    logger.info(
        "partition %s is already committed (run %s); nothing to do — pass force to recompute%s",
        day,
        existing.get("run_id"),
        f" (removed {removed} stray files)" if removed else "",
    )
    return {"status": "skipped"}


def _any_input(inputs: tuple[str, ...]) -> bool:
    for i in inputs:
        fs, path = storage.fs_for(i)
        if any(c in path for c in "*?[") and fs.glob(path):
            return True
        if fs.exists(path) and (fs.isfile(path) or fs.find(path)):
            return True
    return False


def _flow_run_id() -> str | None:
    return str(flow_run.id) if flow_run.id else None


def _code_version() -> str:
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
