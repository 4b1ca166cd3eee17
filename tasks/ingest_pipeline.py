"""Ingest and dedup of one partition as Ray tasks; the driver plans, submits and keeps summaries only.

Stages (the plain functions are in tasks.ingest and tasks.dedup; each is idempotent, so a resumed run
skips what a crashed one finished):
1. split tasks read, validate, hash and stage the input (tasks.splits plans them from the listing);
2. id reducers run the id stage of dedup, one per bucket, once every split is in;
3. content reducers run the content stage and write the shards; they start as the actor pool has room
   (`ContentFeed`), so staged shards waiting for the pool stay within a window.
The tasks run through ray_cluster.task_runner (placement, retries, errors).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable

import ray

from xlmflow import storage
from xlmflow.ray_cluster.task_runner import TaskRunner, get
from xlmflow.tasks import dedup
from xlmflow.tasks.ingest import read_split
from xlmflow.tasks.splits import list_inputs, plan_splits

log = logging.getLogger(__name__)


class ContentFeed:
    """Content reducers started as the pool has room for their shards; `poll` hands out the new shards."""

    def __init__(self, runner: TaskRunner, calls: list[tuple], window: int) -> None:
        self.runner, self.fn, self.window = runner, dedup.reduce_content, window
        self.todo = collections.deque(calls)
        self.inflight: dict = {}
        self.summaries: list[dict] = []
        self.total = len(calls)

    @property
    def exhausted(self) -> bool:
        return not self.todo and not self.inflight

    @property
    def refs(self) -> list:
        return list(self.inflight)

    def poll(self, waiting: int, block: bool = False) -> list[dict]:
        """Shards of the reducers that finished; starts more while fewer than `window` shards wait."""
        while self.todo and len(self.inflight) < self.runner.window and waiting < self.window:
            self.inflight[self.runner.submit(self.fn, *self.todo.popleft())] = True
            waiting += self.window // 2  # a reducer brings a bucket's shards: start them one or two at a time
        if not self.inflight:
            return []
        ready, _ = ray.wait(self.refs, num_returns=1, timeout=None if block else 0)
        shards: list[dict] = []
        for ref in ready:
            del self.inflight[ref]
            summary = get(ref)
            self.summaries.append(summary)
            shards += summary["shards"]
        return shards


def read_inputs(
    settings,  # noqa: ANN001
    staging: str,
    on_plan: Callable[[int], None] | None = None,
    on_split: Callable[[dict], None] | None = None,
) -> dict:
    """Plan and run the split tasks and the id stage; returns what the content stage and commit need.
    `on_plan(number of splits)` is called once planned, `on_split(summary)` as each split finishes."""
    t0 = time.perf_counter()
    listing = list_inputs(settings.inputs, settings.out)
    plan = plan_splits(listing, settings.split_bytes, settings.max_file_bytes, settings.dedup_buckets)
    root = storage.join(staging, f"plan-{plan.plan_id}")
    log.info(
        "ingest: %d files, %d bytes -> %d splits, %d dedup buckets",
        len(listing),
        sum(e["size"] for e in listing),
        len(plan.splits),
        plan.buckets,
    )
    if on_plan:
        on_plan(len(plan.splits))
    runner = TaskRunner()
    payload = settings.model_dump_json()
    calls = [(s.to_dict(), plan.buckets, payload, root) for s in plan.splits]
    summaries = runner.run_all(read_split, calls, on_split)
    t1 = time.perf_counter()
    pieces = dedup.piece_table(plan, summaries)
    # shared by every reducer: into the object store once, not once per task
    split_ref, piece_ref = ray.put(summaries), ray.put(pieces)
    losers = runner.run_all(
        dedup.reduce_ids, [(b, split_ref, piece_ref, plan.buckets, root) for b in range(plan.buckets)]
    )
    loser_ref = ray.put(losers)
    return {
        "runner": runner,
        "listing": listing,
        "plan": plan,
        "root": root,
        "splits": summaries,
        "pieces": pieces,
        "losers": losers,
        "content_calls": [(c, split_ref, loser_ref, piece_ref, payload, root) for c in range(plan.buckets)],
        "seconds": {"read": round(t1 - t0, 3), "dedup_ids": round(time.perf_counter() - t1, 3)},
    }
