"""One base class for every processor: batching, stats and reject routing live here, once.

A processor says only how to turn a batch (an Arrow table of staged rows) into output:
- `columns`: arrays aligned with the batch rows, added to the main record (e.g. lang, lang_score);
- `datasets`: extra tables keyed by dataset name (e.g. "entities", "embeddings", "qe").
A batch that raises is split in halves until the rows that fail are isolated; those rows become
rejects (reason `processing_error`) and the rest of the shard goes on.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from xlmflow.errors import ConfigError, FatalError

if TYPE_CHECKING:
    import pyarrow as pa

    from xlmflow.settings import RunSettings

log = logging.getLogger(__name__)


@dataclass
class BatchOutput:
    columns: dict[str, pa.Array] = field(default_factory=dict)
    datasets: dict[str, pa.Table] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)  # summed per shard, then into the manifest


@dataclass
class ShardOutput:
    table: pa.Table  # the surviving input rows, with added columns
    datasets: dict[str, list[pa.Table]]
    rejects: list[dict]
    stats: dict


class Processor:
    """Subclasses set `name` and implement `process_batch`; heavy state is loaded in `setup`."""

    name: ClassVar[str] = ""
    mode: ClassVar[str] = "docs"  # "docs" or "pairs": which staged record the processor reads
    batch_rows: ClassVar[int] = 4096  # rows handed to process_batch at once (engines batch inside)
    id_column: ClassVar[str] = "doc_id"

    def __init__(self, settings: RunSettings) -> None:
        self.settings = settings

    def setup(self, device: str) -> None:
        """Load models/detectors once per actor. `device` is "cpu" or "cuda"."""

    def model_info(self) -> dict:
        """Resolved model identity (id/path + revision or content hash), recorded in the manifest."""
        return {}

    def process_batch(self, batch: pa.Table) -> BatchOutput:
        raise NotImplementedError

    # ---- the shared machinery ----
    def process(self, table: pa.Table, source_of: callable = None) -> ShardOutput:  # type: ignore[valid-type]
        """Run over a whole shard in batches; isolate failing rows as rejects."""
        import pyarrow as pa

        t0 = time.perf_counter()
        kept: list[pa.Table] = []
        datasets: dict[str, list[pa.Table]] = {}
        rejects: list[dict] = []
        self._counters: collections.Counter[str] = collections.Counter()
        for off in range(0, table.num_rows, self.batch_rows):
            self._run(table.slice(off, self.batch_rows), kept, datasets, rejects)
        out = pa.concat_tables(kept) if kept else table.slice(0, 0)
        stats = {
            "rows_in": table.num_rows,
            "rows_out": out.num_rows,
            "rejects": len(rejects),
            "seconds": time.perf_counter() - t0,
            "counters": dict(self._counters),
        }
        return ShardOutput(out, datasets, rejects, stats)

    def _run(self, batch: pa.Table, kept: list, datasets: dict, rejects: list) -> None:
        try:
            res = self.process_batch(batch)
        except (FatalError, ConfigError, MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - a bad row must not sink the shard
            if batch.num_rows > 1:
                mid = batch.num_rows // 2
                self._run(batch.slice(0, mid), kept, datasets, rejects)
                self._run(batch.slice(mid), kept, datasets, rejects)
                return
            from xlmflow.schemas import make_reject

            row = batch.to_pylist()[0]
            log.warning(
                "%s failed on %s row %s: %r", self.name, row.get("source"), row.get("source_row"), exc
            )
            rejects.append(
                make_reject(
                    row.get("source", ""),
                    row.get("source_row"),
                    "processing_error",
                    f"{self.name}: {type(exc).__name__}: {exc}",
                    row.get("text") or row.get("src", ""),
                )
            )
            return
        for name, col in res.columns.items():
            if name in batch.column_names:
                batch = batch.set_column(batch.column_names.index(name), name, col)
            else:
                batch = batch.append_column(name, col)
        kept.append(batch)
        self._counters.update(res.counters)
        for name, t in res.datasets.items():
            datasets.setdefault(name, []).append(t)


REGISTRY: dict[str, type[Processor]] = {}


def register(cls: type[Processor]) -> type[Processor]:
    REGISTRY[cls.name] = cls
    return cls


def build_processors(settings: RunSettings) -> list[Processor]:
    """Processors for settings.tasks, in order. Imports the processor modules lazily."""
    import importlib

    for mod in ("lid", "ner", "embed", "qe"):
        try:
            importlib.import_module(f"ray_cluster.processors.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"ray_cluster.processors.{mod}":
                raise
    missing = [t for t in settings.tasks if t not in REGISTRY]
    if missing:
        raise ConfigError(f"no processor for task(s) {missing}; available: {sorted(REGISTRY)}")
    return [REGISTRY[t](settings) for t in settings.tasks]
