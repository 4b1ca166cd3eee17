"""The flow's stages as Prefect tasks (verbs), each a thin wrapper over a plain, testable function.

cache_policy=NONE: inputs are large Arrow tables; hashing them for a cache key would cost more than
the stage, and reruns are made safe by the manifest and shard markers, not by Prefect's cache.
"""

from __future__ import annotations

import time

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from tasks import collect, report, shard


@task(name="ingest", cache_policy=NONE)
def ingest_inputs(settings):  # noqa: ANN001, ANN201
    """Read the inputs into one table of accepted records plus rejects."""
    from tasks.ingest import ingest

    t0 = time.perf_counter()
    res = ingest(settings)
    get_run_logger().info("ingest: %s in %.1fs", res.counts(), time.perf_counter() - t0)
    return res


@task(name="shard", cache_policy=NONE)
def shard_records(table, staging: str, settings) -> list[dict]:  # noqa: ANN001
    """Write accepted records as deterministic Arrow IPC shards under staging."""
    id_col = "pair_id" if settings.mode == "pairs" else "doc_id"
    refs = shard.write_shards(table, staging, settings.shard_chars, id_col)
    get_run_logger().info("shard: %d shards of <= %d chars", len(refs), settings.shard_chars)
    return [r.to_dict() for r in refs]


@task(name="process", cache_policy=NONE)
def process_shards(
    shards: list[dict], staging: str, settings, progress_id=None
) -> tuple[dict, dict, list[dict]]:  # noqa: ANN001
    """Run the processors over every unfinished shard on the Ray actor pool."""
    from ray_cluster.actor import DONE_MARKER, results_uri
    from ray_cluster.pool import get_pool
    from xlmflow import storage

    logger = get_run_logger()
    done: dict[str, dict] = {}
    todo = []
    for s in shards:  # resume: shards finished by an earlier (crashed) attempt are not redone
        marker = storage.join(results_uri(staging, s["shard_id"]), DONE_MARKER)
        if storage.exists(marker):
            done[s["shard_id"]] = storage.read_json(marker)
        else:
            todo.append(s)
    if done:
        logger.info("resume: %d of %d shards already done", len(done), len(shards))
    rows = sum(s["rows"] for s in shards)
    progress = report.Progress(len(shards), rows, settings.date.isoformat(), progress_id)
    for stats in done.values():
        progress.shard_done(stats)
    infos: list[dict] = []
    failed: dict[str, str] = {}
    try:
        if todo:
            pool = get_pool(settings)
            infos = pool.actor_infos
            logger.info(
                "pool: %d actors %s", len(infos), [(i["device"], i["cuda_visible_devices"]) for i in infos]
            )
            new, failed = pool.run(todo, staging, on_done=progress.shard_done)
            done.update(new)
    finally:
        progress.close()
    return done, failed, infos


@task(name="commit", cache_policy=NONE)
def commit_partition(settings, shards, done, failed, ingest_res, staging, run, fence=None) -> dict:  # noqa: ANN001
    """Write the Parquet files, commit them to the Delta tables (against the versions the run started
    from, in run["table_versions_at_start"]), then the manifest; all fenced by the lease."""
    counts = {**ingest_res.counts(), "input_files": ingest_res.input_files}
    manifest = collect.collect_partition(
        settings,
        shards,
        done,
        failed,
        counts,
        ingest_res.rejects,
        staging,
        run,
        fence,
        run.get("table_versions_at_start"),
    )
    get_run_logger().info("commit: %s", manifest["counts"])
    return manifest
