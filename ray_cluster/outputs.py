"""What processors return and declare: batch and shard outputs, and the datasets they write.

A processor declares each dataset it writes as a `Dataset`: its Arrow schema and the aggregates the
writer tasks collect from its rows for the run's report (label counts, a sample of scores). The writer
runs whatever aggregates the run's declarations name; it knows no dataset or column by name.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from xlmflow.errors import FatalError


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


class ProcessorContractError(FatalError):
    """A processor emitted a column or dataset it did not declare (a bug in the processor)."""


def merge_outputs(outs: list[BatchOutput]) -> BatchOutput:
    """One BatchOutput of consecutive chunks of a batch."""
    if len(outs) == 1:
        return outs[0]
    merged = BatchOutput()
    for name in outs[0].columns:
        merged.columns[name] = pa.concat_arrays([o.columns[name] for o in outs])
    for name in {n for o in outs for n in o.datasets}:
        merged.datasets[name] = pa.concat_tables([o.datasets[name] for o in outs if name in o.datasets])
    counters: collections.Counter[str] = collections.Counter()
    for o in outs:
        counters.update(o.counters)
    merged.counters = dict(counters)
    return merged


# ---- aggregates: figures a writer task collects from the rows it writes (no data read twice) ----


@dataclass(frozen=True)
class LabelCounts:
    """Rows per value of `column`; the writer returns them under `key` (summed over a dataset's parts)."""

    column: str = "label"
    key: str = "labels"

    def start(self) -> collections.Counter[str]:
        return collections.Counter()

    def add(self, state: collections.Counter[str], table: pa.Table) -> None:
        state.update(table[self.column].to_pylist())

    def result(self, state: collections.Counter[str]) -> dict | None:
        return dict(state) or None

    def summarize(self, dataset: str, results: list[dict]) -> dict:
        """The manifest's entry: {"labels": {dataset: rows per label}} over all parts."""
        total: collections.Counter = collections.Counter()
        for r in results:
            total.update(r)
        return {self.key: {dataset: dict(sorted(total.items(), key=lambda kv: (kv[0] is None, kv[0] or "")))}}


@dataclass(frozen=True)
class ScoreSample:
    """The non-null values of `column` (all of them up to `size`, else `size + 1` quantiles) and their
    count, returned under `key`: enough for the partition's quantiles without reading the data again."""

    column: str = "score"
    key: str = "scores"
    size: int = 4096

    def start(self) -> list:
        return []

    def add(self, state: list, table: pa.Table) -> None:
        state.append(table[self.column])

    def result(self, state: list) -> dict | None:
        import pyarrow.compute as pc  # lazy: pyarrow.compute loads its kernels on first import

        if not state:
            return None
        s = pc.drop_null(pa.chunked_array(state))
        n = len(s)
        if n > self.size:
            s = pc.quantile(s, q=[i / self.size for i in range(self.size + 1)])
        return {"n": n, "sample": s.to_pylist()}

    def summarize(self, dataset: str, results: list[dict]) -> dict:
        """The manifest's entry: {"<dataset>_quantiles": {"p05", "p25", "p50", "p75", "p95"}}."""
        return {f"{dataset}_quantiles": _quantiles(results, (0.05, 0.25, 0.5, 0.75, 0.95))}


def _quantiles(samples: list[dict], qs: tuple[float, ...]) -> dict:
    """Quantiles over the parts' samples: exact when every part returned all its scores (parts of up
    to the sample size its ScoreSample declares), else from each part's quantiles weighted by its row count."""
    import numpy as np  # lazy: the registry imports this module at CLI start

    values = np.concatenate([np.asarray(s["sample"], dtype=np.float64) for s in samples])
    weights = np.concatenate([np.full(len(s["sample"]), s["n"] / max(1, len(s["sample"]))) for s in samples])
    if all(len(s["sample"]) == s["n"] for s in samples):
        got = np.quantile(values, qs)
    else:
        order = np.argsort(values)
        cum = np.cumsum(weights[order])
        got = [values[order][min(len(values) - 1, int(np.searchsorted(cum, q * cum[-1])))] for q in qs]
    return {f"p{int(q * 100):02d}": round(float(v), 4) for q, v in zip(qs, got, strict=True)}


@dataclass(frozen=True)
class Dataset:
    """A dataset a processor writes: its schema (None: known once the model loads, see
    Processor.dataset_schema) and the aggregates its writer tasks collect."""

    schema: pa.Schema | None
    aggregates: tuple[Any, ...] = ()


def as_dataset(declared: Dataset | pa.Schema | None) -> Dataset:
    """A declaration as a Dataset (a bare schema, as plug-ins may declare it, has no aggregates)."""
    return declared if isinstance(declared, Dataset) else Dataset(declared)
