"""Ingest and dedup of one partition as Ray tasks; the driver plans, submits and keeps summaries only.

Stages (the plain functions are in tasks.ingest and tasks.dedup; each is idempotent, so a resumed run
skips what a crashed one finished):
1. split tasks read, validate, hash and stage the input (tasks.splits plans them from the listing);
2. id reducers run the id stage of dedup, one per bucket, once every split is in;
3. content reducers run the content stage and write the shards; they start as the actor pool has room
   (`ContentFeed`), so staged shards waiting for the pool stay within a window.
Tasks declare no CPU (the shard actors may hold every CPU of a node for their lifetime, and a run must
not wait for them to go); the driver bounds how many run at once by the CPUs of the cluster and places
them round-robin on the nodes that have CPUs (soft affinity: a lost node's tasks run elsewhere). A task
that dies with its worker or node is retried by Ray (MAX_RETRIES); an error raised by a task fails the
run with its message.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable

from xlmflow import faults
from xlmflow.errors import FatalError

log = logging.getLogger(__name__)

MAX_RETRIES = 3  # per task, for worker/node deaths (system failures), not for errors it raises
NODES_TTL_S = 2.0


def cpu_nodes() -> list[tuple[str, int]]:
    """(node id, CPUs) of the alive nodes that have CPUs, in a stable order."""
    import ray

    nodes = [(n["NodeID"], int(n["Resources"].get("CPU", 0))) for n in ray.nodes() if n.get("Alive")]
    return sorted((nid, cpus) for nid, cpus in nodes if cpus > 0)


class TaskRunner:
    """Submits plain functions as Ray tasks, at most `window` at a time, spread over the CPU nodes."""

    def __init__(self) -> None:
        nodes = cpu_nodes()
        if not nodes:
            raise FatalError("the Ray cluster has no node with CPUs for the ingest tasks; add a worker node")
        self.window = max(1, sum(c for _, c in nodes))
        self._nodes, self._listed, self._turn = [nid for nid, _ in nodes], time.monotonic(), 0
        self._call = None

    def _next_node(self) -> str:
        """Round-robin over the nodes with CPUs, listed again every few seconds: a task aimed at a lost
        node would land anywhere, the head (no CPUs) included."""
        if time.monotonic() - self._listed > NODES_TTL_S:
            self._nodes = [nid for nid, _ in cpu_nodes()] or self._nodes
            self._listed = time.monotonic()
        self._turn += 1
        return self._nodes[self._turn % len(self._nodes)]

    def submit(self, fn: Callable, *args: object):  # noqa: ANN201 - an ObjectRef
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if self._call is None:
            self._call = ray.remote(num_cpus=0, max_retries=MAX_RETRIES, retry_exceptions=False)(_call)
        strategy = NodeAffinitySchedulingStrategy(self._next_node(), soft=True)
        return self._call.options(scheduling_strategy=strategy, name=fn.__name__).remote(fn, *args)

    def run_all(
        self, fn: Callable, calls: list[tuple], on_done: Callable[[dict], None] | None = None
    ) -> list:
        """Run fn(*call) for every call, `window` at a time; results in call order."""
        import ray

        results: list = [None] * len(calls)
        todo = collections.deque(enumerate(calls))
        inflight: dict = {}
        while todo or inflight:
            while todo and len(inflight) < self.window:
                i, call = todo.popleft()
                inflight[self.submit(fn, *call)] = i
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                i = inflight.pop(ref)
                results[i] = get(ref)
                if on_done:
                    on_done(results[i])
        return results


def _call(fn: Callable, *args: object) -> object:
    """The body of every task: fn(*args), with a failure made portable (xlmflow.failures.portable)."""
    from xlmflow.failures import portable

    faults.point("task", key=fn.__name__)
    try:
        return fn(*args)
    except BaseException as exc:
        raise portable(exc) from exc


def get(ref):  # noqa: ANN001, ANN201
    """ray.get, with a task's own error re-raised as it was raised in the task."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        raise exc.cause from exc
    except ray.exceptions.RayError as exc:
        raise FatalError(
            f"a {MAX_RETRIES + 1}th attempt of a task failed as the ones before ({type(exc).__name__}): "
            f"{str(exc).strip().splitlines()[-1][:300]}; check the Ray cluster, then rerun the same command: "
            "it resumes from finished work"
        ) from exc


class ContentFeed:
    """Content reducers started as the pool has room for their shards; `poll` hands out the new shards."""

    def __init__(self, runner: TaskRunner, calls: list[tuple], window: int) -> None:
        from tasks.dedup import reduce_content

        self.runner, self.fn, self.window = runner, reduce_content, window
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
        import ray

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
    from tasks import dedup
    from tasks.ingest import read_split
    from tasks.splits import list_inputs, plan_splits
    from xlmflow import storage

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
    import ray

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
