"""Plain functions run as Ray tasks: at most as many at once as the cluster has CPUs, spread over its nodes.

Tasks declare no CPU (the shard actors may hold every CPU of a node for their lifetime, and a run must
not wait for them to go); the runner bounds how many run at once by the CPUs of the cluster and places
them round-robin on the nodes that have CPUs (soft affinity: a lost node's tasks run elsewhere). A task
that dies with its worker or node is retried by Ray (MAX_RETRIES); an error raised by a task fails the
run with its message. Every task passes the fault point "task" (xlmflow.faults) with its function's name.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from xlmflow import faults
from xlmflow.errors import FatalError
from xlmflow.failures import portable

log = logging.getLogger(__name__)

MAX_RETRIES = 3  # per task, for worker/node deaths (system failures), not for errors it raises
NODES_TTL_S = 2.0


def cpu_nodes() -> list[tuple[str, int]]:
    """(node id, CPUs) of the alive nodes that have CPUs, in a stable order."""
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
        if self._call is None:
            self._call = ray.remote(num_cpus=0, max_retries=MAX_RETRIES, retry_exceptions=False)(_call)
        strategy = NodeAffinitySchedulingStrategy(self._next_node(), soft=True)
        return self._call.options(scheduling_strategy=strategy, name=fn.__name__).remote(fn, *args)

    def run_all(
        self, fn: Callable, calls: list[tuple], on_done: Callable[[dict], None] | None = None
    ) -> list:
        """Run fn(*call) for every call, `window` at a time; results in call order."""
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
    faults.point("task", key=fn.__name__)
    try:
        return fn(*args)
    except BaseException as exc:
        raise portable(exc) from exc


def get(ref):  # noqa: ANN001, ANN201
    """ray.get, with a task's own error re-raised as it was raised in the task."""
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
