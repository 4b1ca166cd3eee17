"""Part files and Parquet objects written from in-memory tables, for tests and benchmarks that build
tables without running the pipeline (runs write theirs through the writer tasks, xlmflow.tasks.write)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from xlmflow import storage
from xlmflow.part_files import part_uri, write_parquet


def write_table(out: str, dataset: str, date: str, run_id: str, table: pa.Table, index: int = 0) -> tuple:
    """One table as part file `index` of `dataset`, as a writer task writes it: (file entry, schema)."""
    uri = part_uri(out, dataset, date, run_id, index)
    written = write_parquet(out, uri, [table], table.schema.serialize().to_pybytes())
    return written.entry, written.schema


def write_parquet_object(uri: str, table: pa.Table) -> int:
    """One plain Parquet object, written whole; its size in bytes."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    data = sink.getvalue().to_pybytes()
    storage.write_bytes(uri, data)
    return len(data)
