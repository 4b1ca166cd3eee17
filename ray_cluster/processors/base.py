"""The processor contract and the machinery every processor shares (the registry: ray_cluster.registry).

A processor type is one class that describes itself:
- `name` (the type users write in `--tasks` / `--proc NAME=TYPE`), `version` (bump when its output
  changes; for a plug-in the package version is recorded as well), `mode` (reads documents or pairs);
- `Options`: a pydantic model of its options (model spec and knobs), with descriptions and defaults;
  settings validation, CLI options and help, flow parameters and the manifest all come from it;
- `columns`: the columns it adds to the main record, and `datasets`: the datasets it writes, each a
  `Dataset` (ray_cluster.outputs): its Arrow schema (None: known only once the model is
  loaded, `dataset_schema`) and the aggregates the writer collects for the report (or a bare schema);
- `model_class`: the transformers Auto class it loads (None: no model), and `make_tiny`, its offline
  smoke-test checkpoint;
- its work as three phases: `prepare` (CPU: tokenize, window), `infer` (the device: forward passes
  over prepared batches), `finish` (CPU: aggregate into rows, returned as a `BatchOutput`).

A run holds a list of named instances of these types (xlmflow.settings.ProcessorSpec). This base
class batches a shard, isolates failing rows as `processing_error` rejects (a failing batch is split in
halves until the rows that fail are found), counts, and refuses output the class did not declare. A
processor that fails on more than `max_error_fraction` of a shard's rows (and more than a handful), or
on a run of rows with no success between, fails the run with a `SystemicError`: a bug or a wrong model
must not turn a partition into rejects.

Types register by subclassing (ray_cluster.registry: built-in modules of this package,
plug-ins through the entry-point group `xlmflow.processors`; a name is taken once). Plug-ins import
this API from `xlmflow.processors`.
"""

from __future__ import annotations

import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from xlmflow.errors import ConfigError, FatalError, SystemicError
from xlmflow.ray_cluster.engine import Engine
from xlmflow.ray_cluster.models import load_model, make_tiny_xlmr
from xlmflow.ray_cluster.outputs import (  # noqa: F401 - the processor API, in one place
    BatchOutput,
    Dataset,
    LabelCounts,
    ProcessorContractError,
    ScoreSample,
    ShardOutput,
    as_dataset,
    merge_outputs,
)
from xlmflow.ray_cluster.registry import (  # noqa: F401 - re-exported for the modules that import them here
    build_processors,
    known_datasets,
    main_schema,
    register,
    registry,
    run_datasets,
)
from xlmflow.schemas import make_reject

if TYPE_CHECKING:
    from xlmflow.settings import ProcessorSpec, RunSettings

log = logging.getLogger(__name__)

MIN_SYSTEMIC_ROWS = 5  # failures in one shard up to this many are isolated rejects, whatever the share
MAX_CONSECUTIVE_FAILURES = 20  # failed rows in a row (across shards) with no success between: systemic


class Options(BaseModel):
    """Options of a processor type; subclasses add fields (with descriptions and defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelOptions(Options):
    model: str | None = Field(
        default=None, description="HF id, local dir, s3:// prefix, or 'tiny' (offline smoke-test model)."
    )
    stride: int | None = Field(
        default=None, ge=0, description="Token overlap between windows (default: the run's --stride)."
    )
    max_batch_tokens: int | None = Field(
        default=None,
        gt=0,
        description="Padded tokens per model batch (default: the run's --max-batch-tokens).",
    )


class Processor:
    """Subclass, set `name`, declare the outputs, implement `finish` (and `prepare`/`infer`)."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    package: ClassVar[str | None] = None  # "dist==version" of a plug-in, set when its entry point loads
    mode: ClassVar[str] = "docs"  # "docs" or "pairs": which staged record the processor reads
    Options: ClassVar[type[Options]] = Options
    columns: ClassVar[pa.Schema] = pa.schema([])
    columns_after: ClassVar[str | None] = None  # the main-record column `columns` follow (None: the end)
    datasets: ClassVar[dict[str, Dataset | pa.Schema | None]] = {}
    model_class: ClassVar[str | None] = None
    batch_rows: ClassVar[int] = 4096  # rows handed to the phases at once (engines batch inside)

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "name" in cls.__dict__ and cls.name:
            register(cls)

    def __init__(self, spec: ProcessorSpec, settings: RunSettings) -> None:
        self.instance = spec.name
        self.options = self.Options.model_validate(spec.options)
        self.settings = settings
        self._consecutive = 0

    # ---- what a subclass provides ----
    @classmethod
    def code_version(cls) -> str:
        """What the manifest and the config hash record of the processor's code."""
        return f"{cls.version} ({cls.package})" if cls.package else cls.version

    @classmethod
    def hash_inputs(cls) -> dict[str, str]:
        """What besides the version and options decides the output (e.g. a detector's version): part
        of the config hash, so a committed partition keeps its output until --force."""
        return {}

    @classmethod
    def make_tiny(cls, out: str, seed: int = 0) -> str:
        raise ConfigError(f"processor {cls.name} has no tiny model (it loads no model)")

    def setup(self, device: str) -> None:
        """Load models/detectors once per actor. `device` is "cpu" or "cuda"."""

    def model_info(self) -> dict:
        """Resolved model identity (id/path + revision or content hash), recorded in the manifest."""
        return {}

    def dataset_schema(self, name: str) -> pa.Schema:
        schema = as_dataset(type(self).datasets[name]).schema
        if schema is None:
            raise NotImplementedError(f"{type(self).__name__} must give the schema of {name} once set up")
        return schema

    def languages(self, main: pa.Table, datasets: dict[str, list[pa.Table]]) -> dict[str, int] | None:
        """Rows per language of a processed shard (the manifest's `by_lang`), from the main record and
        this instance's datasets; None when this type detects no language."""
        return None

    def count_sections(self, counters: dict[str, int]) -> dict[str, dict[str, int]]:
        """Sections of the manifest's `counts` this type makes of a shard's counters (summed over the
        shards and instances of the run), e.g. lid's `lid_decided_by`."""
        return {}

    def prepare(self, batch: pa.Table) -> Any:
        """CPU work before the device (tokenize, window)."""
        return batch

    def infer(self, prepared: Any) -> Any:
        """The device's work: forward passes over what `prepare` made."""
        return prepared

    def finish(self, batch: pa.Table, prepared: Any, inferred: Any) -> BatchOutput:
        """CPU work after the device: rows of the declared columns and datasets."""
        raise NotImplementedError

    def process_batch(self, batch: pa.Table) -> BatchOutput:
        prepared = self.prepare(batch)
        return self.finish(batch, prepared, self.infer(prepared))

    # ---- the shared machinery ----
    def process(self, table: pa.Table) -> ShardOutput:
        """Run over a whole shard in batches; isolate failing rows as rejects; refuse systemic failure."""
        t0 = time.perf_counter()
        kept: list[pa.Table] = []
        datasets: dict[str, list[pa.Table]] = {}
        rejects: list[dict] = []
        self._counters: collections.Counter[str] = collections.Counter()
        self._limit = max(MIN_SYSTEMIC_ROWS, int(self.settings.max_error_fraction * table.num_rows))
        self._shard_rows, self._first_error = table.num_rows, None
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
            self._check(res, batch.num_rows)
        except (FatalError, ConfigError, MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - a bad row must not sink the shard
            if batch.num_rows > 1:
                mid = batch.num_rows // 2
                self._run(batch.slice(0, mid), kept, datasets, rejects)
                self._run(batch.slice(mid), kept, datasets, rejects)
                return
            rejects.append(self._reject(batch, exc))
            return
        self._consecutive = 0
        for name, col in res.columns.items():
            if name in batch.column_names:
                batch = batch.set_column(batch.column_names.index(name), name, col)
            else:
                batch = batch.append_column(name, col)
        kept.append(batch)
        self._counters.update(res.counters)
        for name, t in res.datasets.items():
            datasets.setdefault(name, []).append(self._conform(name, t))

    def _reject(self, batch: pa.Table, exc: Exception) -> dict:
        row = batch.to_pylist()[0]
        msg = f"{self.instance}: {type(exc).__name__}: {exc}"
        self._first_error = self._first_error or msg
        self._consecutive += 1
        n_failed = self._counters["failed_rows"] = self._counters["failed_rows"] + 1
        if n_failed > self._limit or self._consecutive >= MAX_CONSECUTIVE_FAILURES:
            raise SystemicError(
                f"processor {self.instance} ({self.name}) failed on {n_failed} of {self._shard_rows} rows of a "
                f"shard ({self._consecutive} in a row), more than --max-error-fraction "
                f"{self.settings.max_error_fraction:g} allows: this is not a bad document but a bug or a wrong "
                f"model. First error: {self._first_error}"
            )
        log.warning(
            "%s failed on %s row %s: %r", self.instance, row.get("source"), row.get("source_row"), exc
        )
        return make_reject(
            row.get("source", ""),
            row.get("source_row"),
            "processing_error",
            msg,
            row.get("text") or row.get("src", ""),
        )

    def _check(self, res: BatchOutput, rows: int) -> None:
        """Output the class did not declare is a bug, never a silent drop."""
        declared = set(self.columns.names)
        for name, col in res.columns.items():
            if name not in declared:
                raise ProcessorContractError(
                    f"processor {self.name} emitted column {name!r} it does not declare in `columns` "
                    f"({sorted(declared)})"
                )
            if len(col) != rows:
                raise ProcessorContractError(
                    f"processor {self.name}: column {name!r} has {len(col)} rows, not {rows}"
                )
        for name in res.datasets:
            if name not in self.datasets:
                raise ProcessorContractError(
                    f"processor {self.name} emitted dataset {name!r} it does not declare in `datasets` "
                    f"({sorted(self.datasets)})"
                )

    def _conform(self, name: str, table: pa.Table) -> pa.Table:
        """The dataset's declared schema; `instance` is filled in when the processor leaves it out."""
        schema = self.dataset_schema(name)
        if "instance" in schema.names and "instance" not in table.column_names:
            table = table.append_column("instance", pa.array([self.instance] * table.num_rows, pa.string()))
        extra = set(table.column_names) - set(schema.names)
        missing = set(schema.names) - set(table.column_names)
        if extra or missing:
            raise ProcessorContractError(
                f"processor {self.name}: dataset {name!r} has columns {table.column_names}, declared "
                f"{schema.names} (undeclared: {sorted(extra)}, missing: {sorted(missing)})"
            )
        return table.select(schema.names).cast(schema)


class ModelProcessor(Processor):
    """A processor over one XLM-R checkpoint through the shared Engine (ray_cluster.engine)."""

    Options: ClassVar[type[Options]] = ModelOptions
    model_class: ClassVar[str | None] = "AutoModel"
    pipelined: bool = False  # set by setup: prepare the next chunk while the device runs (CUDA)
    # prepare/finish need only the tokenizer and config, so they may run in CPU workers
    # (ray_cluster.phases); False for a processor whose finish runs the model or needs more state
    cpu_phases: ClassVar[bool] = True
    phases: Any = None  # the actor's PhaseWorkers, when it has them
    batch_rows: ClassVar[int] = 1_000_000  # the whole shard at once, so length sorting and batching pay off

    def setup(self, device: str) -> None:
        o, s = self.options, self.settings
        if not o.model:
            flag = f"--{self.name}-model" if self.instance == self.name else f"--{self.instance}.model"
            raise ConfigError(
                f"processor {self.instance} ({self.name}) needs a model: pass {flag} MODEL (HF id, local "
                "dir, s3:// prefix, or tiny)"
            )
        lm = load_model(o.model, self.model_kind(), s)
        self.check_model(lm)
        self.engine = Engine(
            lm,
            device,
            max_batch_tokens=o.max_batch_tokens or s.max_batch_tokens,
            stride=s.stride if o.stride is None else o.stride,
            forward=s.forward,
            cpu_precision=s.cpu_precision,
            gpu_precision=s.gpu_precision,
        )
        self.pipelined = self.engine.device == "cuda"

    def setup_phases(self) -> None:
        """A CPU-side copy for the phase workers: tokenizer and config, no weights, no forward."""
        o, s = self.options, self.settings
        lm = load_model(o.model, self.model_kind(), s, weights=False)
        self.check_model(lm)
        self.engine = Engine(lm, "cpu", stride=s.stride if o.stride is None else o.stride)

    def model_kind(self) -> str:
        """The processor type whose model class (and tiny model) loads this instance's model."""
        return self.name

    def check_model(self, lm: Any) -> None:
        """Refuse a checkpoint this processor cannot use (raise ConfigError)."""

    def process_batch(self, batch: pa.Table) -> BatchOutput:
        """On CUDA, chunk k+1 is prepared in a thread while the device runs chunk k (the Rust tokenizer
        releases the GIL); on CPU one chunk: preparing is cheap next to the model."""
        n, size = batch.num_rows, self.engine.prefetch_docs
        if self.phases is not None:
            try:
                return self.phases.run(self, batch, size)
            except Exception as exc:
                if not _worker_lost(exc):
                    raise
                log.warning(
                    "%s: a CPU worker was lost (%s); this actor runs the CPU phases itself",
                    self.instance,
                    exc,
                )
                self.phases = None
        if not self.pipelined or n <= size:
            return super().process_batch(batch)
        chunks = [batch.slice(off, size) for off in range(0, n, size)]
        outs = []
        with ThreadPoolExecutor(1, thread_name_prefix="prepare") as ex:
            fut = ex.submit(self.prepare, chunks[0])
            for k, chunk in enumerate(chunks):
                prepared = fut.result()
                if k + 1 < len(chunks):
                    fut = ex.submit(self.prepare, chunks[k + 1])
                outs.append(self.finish(chunk, prepared, self.infer(prepared)))
        return merge_outputs(outs)

    def model_info(self) -> dict:
        return {**self.engine.lm.info, **self.engine.describe()}

    tiny_labels: ClassVar[list[str]] = []  # the tiny checkpoint's labels (none: the config's default)

    @classmethod
    def tiny_config(cls) -> dict:
        """Config fields of the tiny checkpoint (labels, problem type)."""
        labels = cls.tiny_labels
        return (
            {"id2label": dict(enumerate(labels)), "label2id": {lab: i for i, lab in enumerate(labels)}}
            if labels
            else {}
        )

    @classmethod
    def tiny_init(cls, model: Any) -> None:
        """Adjust the tiny model's random weights (e.g. sharper logits)."""

    @classmethod
    def make_tiny(cls, out: str, seed: int = 0) -> str:
        return make_tiny_xlmr(
            cls.name, cls.model_class or "AutoModel", out, seed, cls.tiny_config(), cls.tiny_init
        )


def _worker_lost(exc: BaseException) -> bool:
    """A phase worker died or cannot be reached (not an error of the rows it had)."""
    from ray.exceptions import ActorUnavailableError, RayActorError  # lazy: ray costs seconds at CLI start

    return isinstance(exc, RayActorError | ActorUnavailableError)
