"""The flow's stages as Prefect tasks (verbs), each a thin wrapper over plain, testable functions.

cache_policy=NONE: reruns are made safe by the manifest and the staged markers of every split, reducer
and shard, not by Prefect's cache; the stages return summaries, never data.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from xlmflow import storage
from xlmflow.partition import Partition
from xlmflow.ray_cluster.actor import DONE_MARKER, results_uri
from xlmflow.ray_cluster.cluster import check_out_reachable, connect
from xlmflow.ray_cluster.pool import get_pool
from xlmflow.ray_cluster.task_runner import TaskRunner
from xlmflow.records import IngestResult, ProcessResult, RunFacts
from xlmflow.tasks import collect, report
from xlmflow.tasks.ingest_pipeline import ContentFeed, read_inputs


@dataclass(frozen=True)
class Ingested:
    """Ingest's result in the driver: the record, and beside it the live handles the next stages use
    (the task runner, which also runs the content reducers and the writer tasks; the content
    reducers' calls, which hold Ray object references). Not a record: it never leaves the driver."""

    record: IngestResult
    runner: TaskRunner
    content_calls: list[tuple]


@task(name="ingest", cache_policy=NONE)
def ingest_inputs(settings, staging: str, progress_id=None) -> Ingested:  # noqa: ANN001
    """List and split the inputs, read them on the cluster, run the id stage of dedup."""
    connect(settings.ray_address)
    check_out_reachable(settings.out, settings.shared_out)
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
    record = IngestResult(
        staging=staging,
        root=ing["root"],
        listing=ing["listing"],
        splits=ing["splits"],
        pieces=ing["pieces"],
        losers=ing["losers"],
        buckets=ing["plan"].buckets,
        seconds=ing["seconds"],
    )
    _log_ingest(record)
    return Ingested(record, ing["runner"], ing["content_calls"])


def _log_ingest(ing: IngestResult) -> None:
    splits = ing.splits
    get_run_logger().info(
        "ingest: %d rows read by %d split tasks on %d nodes: %d accepted, %d rejected; dedup id stage: %d "
        "duplicates (%s)",
        ing.input_rows,
        len(splits),
        len({s.get("node_id") for s in splits}),
        sum(s["accepted"] for s in splits),
        sum(s["rejects"] for s in splits),
        sum(lo["losers"] for lo in ing.losers),
        ", ".join(f"{k} {v:.1f}s" for k, v in ing.seconds.items()),
    )


@task(name="process", cache_policy=NONE)
def process_shards(ingested: Ingested, settings, progress_id=None) -> ProcessResult:  # noqa: ANN001
    """Run the content stage of dedup (it writes the shards) and the processors over every unfinished
    shard on the Ray actor pool."""
    logger = get_run_logger()
    staging = ingested.record.staging
    runner = ingested.runner
    window = max(4, 2 * runner.window * settings.max_inflight_per_actor)
    feed = ContentFeed(runner, ingested.content_calls, window)
    expected = ingested.record.expected_documents
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
            pool = _pool(settings)
            infos = pool.actor_infos
            new, failed = pool.run(todo, staging, on_done=progress.shard_done, feed=_Feed())
            done.update(new)
    finally:
        progress.close()
    logger.info("process: %d shards, %d failed", len(shards), len(failed))
    return ProcessResult(shards=shards, done=done, failed=failed, actors=infos, content=feed.summaries)


def _pool(settings):  # noqa: ANN001, ANN202
    """The run's actor pool (started now, or with the run before the flow), logged."""
    pool = get_pool(settings)
    infos = pool.actor_infos
    get_run_logger().info(
        "pool: %d actors %s%s",
        len(infos),
        [(i["device"], i["cuda_visible_devices"]) for i in infos],
        " (started with the run, before the flow)" if pool.prestarted else "",
    )
    return pool


@task(name="commit", cache_policy=NONE)
def commit_outputs(
    settings,  # noqa: ANN001
    partition: Partition,
    ingested: Ingested,
    processed: ProcessResult,
    facts: RunFacts,
) -> dict:
    """Writer tasks write the Parquet files; the partition commits them to the Delta tables (against the
    versions it saw when the run started), then the manifest; all fenced by its lease."""
    manifest = collect.commit_outputs(settings, partition, ingested.record, processed, facts, ingested.runner)
    get_run_logger().info("commit: %s", manifest["counts"])
    return manifest
