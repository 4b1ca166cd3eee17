"""CPU workers beside a GPU actor: the `prepare` and `finish` phases of its model processors run in
other processes on the same node, so the process that owns the GPU does forward passes and little else.

`PhaseWorkers` (made by the shard actor) starts `n` Ray actors pinned to the actor's node (they hold a
tokenizer and a config each, no weights) and runs a batch as a pipeline of chunks: at most 2 chunks per
worker are being prepared ahead of the device (a bounded queue: memory stays flat however long the
batch), each chunk's finish is queued as soon as its forward pass ends, and the outputs come back in
order — the same rows the in-process path gives (tests/test_phases.py). The workers reserve no CPUs of
the cluster's count: they use the node's cores the GPU actors leave idle.

A worker that dies costs nothing but speed: the batch is redone in the actor, which runs the phases
itself from then on. An exception of a phase (a bad document) reaches the processor as in-process, so
its reject isolation works unchanged.
"""

from __future__ import annotations

import collections
import logging
import os
from typing import TYPE_CHECKING, Any

from xlmflow.ray_cluster.outputs import BatchOutput, merge_outputs
from xlmflow.ray_cluster.registry import build_processors
from xlmflow.settings import RunSettings

if TYPE_CHECKING:
    import pyarrow as pa

    from xlmflow.ray_cluster.processors.base import ModelProcessor

log = logging.getLogger(__name__)

AHEAD_PER_WORKER = 2  # chunks prepared ahead of the device per worker


class PhaseWorker:
    """Ray actor body: CPU-side copies of the run's model processors (tokenizer and config only)."""

    def __init__(self, settings_json: str) -> None:
        settings = RunSettings.model_validate_json(settings_json)
        self.procs = {p.instance: p for p in phase_processors(build_processors(settings))}
        for p in self.procs.values():
            p.setup_phases()
        self.calls: collections.Counter[str] = collections.Counter()

    def prepare(self, instance: str, batch: pa.Table) -> Any:
        self.calls["prepare"] += 1
        return self.procs[instance].prepare(batch)

    def finish(self, instance: str, batch: pa.Table, prepared: Any, inferred: Any) -> BatchOutput:
        self.calls["finish"] += 1
        return self.procs[instance].finish(batch, prepared, inferred)

    def stats(self) -> dict:
        return {"pid": os.getpid(), **self.calls}


class PhaseWorkers:
    def __init__(self, settings_json: str, n: int) -> None:
        import ray  # lazy: ray takes seconds to import; only Ray processes need it
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        cls = ray.remote(num_cpus=0, max_restarts=0)(PhaseWorker)
        self.workers = [cls.options(scheduling_strategy=here).remote(settings_json) for _ in range(n)]

    def wait_ready(self) -> None:
        """Block until every worker has set up (its setup error, if any, is raised here)."""
        self.stats()

    def run(self, proc: ModelProcessor, batch: pa.Table, chunk_rows: int) -> BatchOutput:
        import ray  # lazy: ray takes seconds to import; only Ray processes need it

        chunks = [batch.slice(off, chunk_rows) for off in range(0, batch.num_rows, chunk_rows)]
        n, ahead = len(self.workers), AHEAD_PER_WORKER * len(self.workers)
        preps: dict[int, Any] = {}

        def submit(k: int) -> None:
            preps[k] = self.workers[k % n].prepare.remote(proc.instance, chunks[k])

        for k in range(min(ahead, len(chunks))):
            submit(k)
        finishing = []
        for k, chunk in enumerate(chunks):
            prepared = ray.get(preps[k])
            if k + ahead < len(chunks):
                submit(k + ahead)
            inferred = proc.infer(prepared)
            # the prepared chunk goes back as its object ref: no second serialization in this process
            finishing.append(self.workers[k % n].finish.remote(proc.instance, chunk, preps.pop(k), inferred))
        return merge_outputs(ray.get(finishing))

    def stats(self) -> list[dict]:
        import ray  # lazy: as above

        return ray.get([w.stats.remote() for w in self.workers])


def phase_processors(processors: list) -> list:
    """The processors whose prepare/finish the workers run: model processors that allow it."""
    return [p for p in processors if p.model_class and p.cpu_phases]
