"""A partition's data files: where they go, how they are named, and how one is written.

Every data file of a run is `OUT/<dataset>/date=D/part-<run 8 hex>-<n>.parquet`, a name unique to the run
that wrote it (files are never overwritten): the debris check (xlmflow.partition) tells a run's files by
that prefix. Writer tasks (tasks.write) and migrate (xlmflow.maintenance) write them with `write_parquet`.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

import pyarrow.compute as pc
import pyarrow.parquet as pq

from xlmflow import schemas, storage
from xlmflow.stats import file_stats

# part files are named by the first 8 hex digits of the run that wrote them
PART_NAME = re.compile(r"^part-([0-9a-f]{8})-\d+\.parquet$")


def partition_dir(out: str, dataset: str, date: str) -> str:
    return storage.join(out, dataset, f"date={date}")


def part_uri(out: str, dataset: str, date: str, run_id: str, index: int) -> str:
    """The `index`th part file of run `run_id` (named as the debris check expects)."""
    return storage.join(partition_dir(out, dataset, date), f"part-{run_id[:8]}-{index:05d}.parquet")


class WrittenFile(NamedTuple):
    entry: dict  # {"path" (relative to OUT), "rows", "bytes", "mtime" (ms), "stats" (Delta's stats JSON)}
    schema: object  # the file's pyarrow schema


def _nan_columns(t) -> set[str]:  # noqa: ANN001
    """The float columns of `t` holding NaN (their file statistics get no bounds)."""
    import pyarrow as pa  # lazy: pyarrow costs at CLI start

    return {f.name for f in t.schema if pa.types.is_floating(f.type) and pc.any(pc.is_nan(t[f.name])).as_py()}


def write_parquet(
    out: str,
    uri: str,
    tables: Iterable,
    empty: bytes | None = None,
    on_table: Callable[[object], None] | None = None,
) -> WrittenFile:
    """Write one Parquet file at `uri` (under `out`) from `tables`, in the dataset's file schema (that of
    the first non-empty table, schemas.file_schema); an empty file with the serialized schema `empty`
    when they hold no rows. `on_table(t)` sees each table written. Visible whole or not at all."""
    import pyarrow as pa  # lazy: pyarrow costs at CLI start

    rows = 0
    schema = None
    nan: set[str] = set()
    with storage.writing(uri) as path:
        writer = None
        try:
            for t in tables:
                if not t.num_rows:
                    continue
                if writer is None:
                    schema = schemas.file_schema(t.schema)
                    writer = pq.ParquetWriter(path, schema, compression="zstd")
                t = t.cast(schema) if t.schema != schema else t
                schemas.check_widths(t, schema)
                nan |= _nan_columns(t)
                writer.write_table(t)
                rows += t.num_rows
                if on_table:
                    on_table(t)
            if writer is None:
                if empty is None:
                    raise ValueError(f"no rows and no schema for an empty file at {uri}")
                schema = schemas.file_schema(pa.ipc.read_schema(pa.py_buffer(empty)))
                writer = pq.ParquetWriter(path, schema, compression="zstd")
                writer.write_table(schema.empty_table())
        finally:
            if writer is not None:
                writer.close()
        footer = writer.writer.metadata  # the statistics the writer put in the file's footer
        size = os.path.getsize(path)
    entry = {
        "path": uri[len(out.rstrip("/")) + 1 :],
        "rows": rows,
        "bytes": size,
        "mtime": int(time.time() * 1000),
        "stats": file_stats(footer, schema, nan),
    }
    return WrittenFile(entry, schema)
