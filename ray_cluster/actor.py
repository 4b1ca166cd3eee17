"""The long-lived shard worker: processors (models, detectors) load once in __init__, shards stream in."""

from __future__ import annotations

import collections
import logging
import os
import socket
import time
from dataclasses import dataclass, field

import pyarrow as pa

from xlmflow import faults, schemas, storage
from xlmflow.errors import ConfigError, FatalError
from xlmflow.ray_cluster.cluster import node_id
from xlmflow.ray_cluster.phases import PhaseWorkers, phase_processors
from xlmflow.ray_cluster.registry import build_processors, main_name, main_schema
from xlmflow.settings import RunSettings

log = logging.getLogger(__name__)

DONE_MARKER = "_SUCCESS.json"


def results_uri(staging: str, shard_id: str) -> str:
    return storage.join(staging, "results", shard_id)


class ShardWorker:
    """Ray actor body (wrapped with ray.remote by the pool). Also usable in-process for tests."""

    def __init__(self, settings_json: str, num_cpus: float = 1.0) -> None:
        self.settings = RunSettings.model_validate_json(settings_json)
        self.main_schema = main_schema(self.settings)  # the same for every shard of the run
        t0 = time.perf_counter()
        self.processors = build_processors(self.settings)
        # torch takes seconds to import: an actor without a model (lid alone) never needs it
        self.device = _pick_device(num_cpus) if any(p.model_class for p in self.processors) else "cpu"
        phased = phase_processors(self.processors)
        workers = self._start_phase_workers(settings_json, phased)  # tokenizers load beside our models
        self.cpu_workers, self.failure = 0, None
        for p in self.processors:
            try:
                p.setup(self.device)
            except Exception as exc:  # noqa: BLE001 - kept for `info`: an __init__ that raises would
                # print Ray's creation-task traceback on the driver's console, and restart the actor
                log.debug("%s failed to set up", p.instance, exc_info=True)
                self.failure = setup_failure(p, exc)
                return
        if workers is not None:
            workers.wait_ready()
            for p in phased:
                p.phases = workers
            self.cpu_workers = len(workers.workers)
        self.setup_seconds = time.perf_counter() - t0

    def _start_phase_workers(self, settings_json: str, procs: list):  # noqa: ANN202 - PhaseWorkers | None
        """CPU workers for the tokenize/aggregate phases (ray_cluster.phases): by default 2 beside a GPU
        actor, none on CPU, where they would only compete with the forward passes for the same cores."""
        n = self.settings.cpu_workers
        n = (2 if self.device == "cuda" else 0) if n is None else n
        if not n or not procs:
            return None
        import ray  # lazy: ray takes seconds to import; in-process use (tests, benchmarks) may not need it

        if not ray.is_initialized():  # in-process use (tests, benchmarks): no Ray to start workers on
            return None
        return PhaseWorkers(settings_json, n)

    def info(self) -> dict:
        """Where this actor runs and what it sees (used by the placement tests and the manifest)."""
        import ray  # lazy: as above

        if self.failure is not None:
            raise self.failure

        try:
            gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        except Exception:  # noqa: BLE001 - outside a Ray worker
            gpu_ids = []
        return {
            "host": socket.gethostname(),
            "node_id": node_id(),
            "pid": os.getpid(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "gpu_ids": gpu_ids,
            "device": self.device,
            "setup_seconds": round(self.setup_seconds, 3),
            "cpu_workers": self.cpu_workers,
            "models": {p.instance: {"type": p.name, **p.model_info()} for p in self.processors},
        }

    def process_shard(self, shard: dict, staging: str) -> dict:
        """Process one shard and write its results; idempotent (a finished shard is not redone)."""
        if self.failure is not None:
            raise self.failure
        out_dir = results_uri(staging, shard["shard_id"])
        marker = storage.join(out_dir, DONE_MARKER)
        if storage.exists(marker):
            return storage.read_json(marker)
        faults.point("shard", key=shard["shard_id"])
        faults.point("task", key="process_shard")
        t0 = time.perf_counter()
        run = self._run_processors(shard)
        table, rejects, datasets = run.table, run.rejects, run.datasets
        name = main_name(self.settings)
        main = _conform(table, self.main_schema)
        counts = {name: main.num_rows, "rejects": len(rejects)}
        nbytes = {name: main.nbytes}
        # data objects first, the marker last: a shard is done only when all its files are whole
        storage.write_table_ipc(storage.join(out_dir, f"{name}.arrow"), main)
        storage.write_table_ipc(storage.join(out_dir, "rejects.arrow"), schemas.rejects_table(rejects))
        for dataset, parts in datasets.items():
            t = pa.concat_tables(parts)
            counts[dataset], nbytes[dataset] = t.num_rows, t.nbytes
            storage.write_table_ipc(storage.join(out_dir, f"{dataset}.arrow"), t)
        stats = {
            "shard_id": shard["shard_id"],
            "rows_in": shard["rows"],
            "chars": shard["chars"],
            "counts": counts,
            "bytes": nbytes,  # in memory: what the writer tasks size their Parquet files by
            "rejects_by_reason": dict(collections.Counter(r["reason"] for r in rejects)),
            "by_lang": run.languages(main),
            "count_sections": run.sections,
            "processors": run.per_instance,
            "seconds": round(time.perf_counter() - t0, 4),
            "actor": {
                "node_id": node_id(),
                "pid": os.getpid(),
                "device": self.device,
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            },
        }
        storage.write_json(marker, stats)
        return stats

    def _run_processors(self, shard: dict) -> _ShardRun:
        """The shard through every processor, in order."""
        run = _ShardRun(storage.read_table_ipc(shard["uri"]))
        for p in self.processors:
            res = p.process(run.table)
            run.table, run.rejects = res.table, run.rejects + res.rejects
            for name, parts in res.datasets.items():
                run.datasets[name].extend(parts)
            run.per_instance[p.instance] = {"type": p.name, **res.stats}
            for key, section in p.count_sections(res.stats["counters"]).items():
                run.sections.setdefault(key, collections.Counter()).update(section)
            run.outputs.append((p, res.datasets))
        return run


@dataclass
class _ShardRun:
    """What a shard's processors made, as the actor gathers it (never leaves the actor)."""

    table: pa.Table  # the surviving rows, with the added columns
    rejects: list[dict] = field(default_factory=list)
    datasets: dict[str, list[pa.Table]] = field(default_factory=lambda: collections.defaultdict(list))
    per_instance: dict[str, dict] = field(default_factory=dict)
    sections: dict[str, collections.Counter] = field(default_factory=dict)  # manifest count sections
    outputs: list[tuple] = field(default_factory=list)  # (processor, its datasets)

    def languages(self, main: pa.Table) -> dict[str, int]:
        """Rows per language, from the first instance that detects languages ({} when none does)."""
        for p, own in self.outputs:
            got = p.languages(main, own)
            if got is not None:
                return got
        return {}


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast to the main record's schema; a declared column the rows lack (a processor whose every row
    failed leaves none) is nulls. Processors cannot add columns the schema lacks: the base class refuses
    undeclared ones."""
    cols = [
        table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(cols, schema=schema)


def _pick_device(num_cpus: float) -> str:
    """CUDA when this actor was given a GPU that torch can see, else CPU with threads matched to its CPUs."""
    try:
        # lazy: torch takes seconds to import; only actors need it
        import torch
    except ImportError:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    torch.set_num_threads(max(1, int(num_cpus)))
    return "cpu"


def setup_failure(p, exc: Exception) -> Exception:  # noqa: ANN001 - a Processor
    """What a processor's failed setup ends the run with: one line naming the instance and its model;
    a model that does not fit (weights against config, unreadable weights) is a ConfigError (exit 2)."""
    model = getattr(getattr(p, "options", None), "model", None)
    what = f"processor {p.instance} ({p.name})" + (f", model {model!r}" if model else "")
    text = str(exc).strip()
    if isinstance(exc, ConfigError):
        return exc if text.startswith(f"processor {p.instance} ") else ConfigError(f"{what}: {text}")
    if "size mismatch" in text or "ignore_mismatched_sizes" in text:
        return ConfigError(
            f"{what}: its weights do not fit the model its config.json describes (a layer or head of "
            "another size, e.g. id2label/num_labels that differ from the classifier's rows); fix "
            "config.json or pass a checkpoint whose config matches its weights"
        )
    if type(exc).__module__.startswith("safetensors") or type(exc).__name__ == "SafetensorError":
        return ConfigError(
            f"{what}: its safetensors weights do not load ({text.splitlines()[0]}); download or copy "
            "the checkpoint again"
        )
    first = text.splitlines()[0] if text else repr(exc)
    return FatalError(f"{what} failed to load: {type(exc).__name__}: {first}")
