"""The flow's stages as Prefect tasks (verbs), each a thin wrapper over plain, testable functions.

cache_policy=NONE: reruns are made safe by the manifest and the staged markers of every split, reducer
and shard, not by Prefect's cache; the stages return summaries, never data.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from tasks import collect, report


@task(name="ingest", cache_policy=NONE)
def ingest_inputs(settings, staging: str, progress_id=None) -> dict:  # noqa: ANN001
    """List and split the inputs, read them on the cluster, run the id stage of dedup."""
    from ray_cluster.cluster import check_out_reachable, connect
    from tasks.ingest_pipeline import read_inputs

    connect(settings.ray_address)
    check_out_reachable(settings.out, settings.shared_out)
    logger = get_run_logger()
    progress: list = []  # the bar, once the plan says how many splits there are

    def on_plan(n_splits: int) -> None:
        progress.append(
            report.Progress(n_splits, f"read {settings.date.isoformat()}", progress_id, unit="split")
        )

    try:
        ing = read_inputs(settings, staging, on_plan, lambda summary: progress[0].advance(1))
    finally:
        for p in progress:
            p.close()
    splits = ing["splits"]
    logger.info(
        "ingest: %d rows read by %d split tasks on %d nodes: %d accepted, %d rejected; dedup id stage: %d "
        "duplicates (%s)",
        sum(s["input_rows"] for s in splits),
        len(splits),
        len({s.get("node_id") for s in splits}),
        sum(s["accepted"] for s in splits),
        sum(s["rejects"] for s in splits),
        sum(lo["losers"] for lo in ing["losers"]),
        ", ".join(f"{k} {v:.1f}s" for k, v in ing["seconds"].items()),
    )
    ing["staging"] = staging
    return ing


@task(name="process", cache_policy=NONE)
def process_shards(ing: dict, settings, progress_id=None) -> tuple:  # noqa: ANN001
    """Run the content stage of dedup (it writes the shards) and the processors over every unfinished
    shard on the Ray actor pool; returns (shards, done, failed, actor infos, content summaries)."""
    from ray_cluster.actor import DONE_MARKER, results_uri
    from ray_cluster.pool import get_pool
    from tasks.ingest_pipeline import ContentFeed
    from xlmflow import storage

    logger = get_run_logger()
    staging = ing["staging"]
    runner = ing["runner"]
    window = max(4, 2 * runner.window * settings.max_inflight_per_actor)
    feed = ContentFeed(runner, ing["content_calls"], window)
    expected = sum(s["accepted"] for s in ing["splits"]) - sum(lo["losers"] for lo in ing["losers"])
    progress = report.Progress(expected, f"process {settings.date.isoformat()}", progress_id)
    shards: list[dict] = []
    done: dict[str, dict] = {}
    seen_summaries = 0

    def take(new: list[dict]) -> list[dict]:
        """Record staged shards; those an earlier (crashed) attempt finished are done, not redone."""
        nonlocal seen_summaries
        for summary in feed.summaries[seen_summaries:]:
            progress.shrink(summary["rejects"])
        seen_summaries = len(feed.summaries)
        todo = []
        for s in new:
            shards.append(s)
            marker = storage.join(results_uri(staging, s["shard_id"]), DONE_MARKER)
            if storage.exists(marker):
                done[s["shard_id"]] = storage.read_json(marker)
                progress.shard_done(done[s["shard_id"]])
            else:
                todo.append(s)
        return todo

    class _Feed:  # the pool's view of the content stage
        exhausted = property(lambda self: feed.exhausted)
        refs = property(lambda self: feed.refs)

        def poll(self, waiting: int) -> list[dict]:
            return take(feed.poll(waiting))

    infos: list[dict] = []
    failed: dict[str, str] = {}
    try:
        todo: list[dict] = []
        while not todo and not feed.exhausted:
            todo = take(feed.poll(0, block=True))
        if done:
            logger.info("resume: %d shards already done", len(done))
        if todo:
            pool = get_pool(settings)
            infos = pool.actor_infos
            logger.info(
                "pool: %d actors %s%s",
                len(infos),
                [(i["device"], i["cuda_visible_devices"]) for i in infos],
                " (started with the run, before the flow)" if pool.prestarted else "",
            )
            new, failed = pool.run(todo, staging, on_done=progress.shard_done, feed=_Feed())
            done.update(new)
    finally:
        progress.close()
    logger.info("process: %d shards, %d failed", len(shards), len(failed))
    return shards, done, failed, infos, feed.summaries


@task(name="commit", cache_policy=NONE)
def commit_partition(settings, ing, processed, run, fence=None) -> dict:  # noqa: ANN001
    """Writer tasks write the Parquet files; commit them to the Delta tables (against the versions the run
    started from, in run["table_versions_at_start"]), then the manifest; all fenced by the lease."""
    shards, done, failed, _infos, content = processed
    manifest = collect.collect_partition(
        settings, ing, shards, done, failed, content, run, fence, run.get("table_versions_at_start")
    )
    get_run_logger().info("commit: %s", manifest["counts"])
    return manifest
