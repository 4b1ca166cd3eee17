"""Writer tasks: the final Parquet files of a dataset, written on the cluster from staged results.

The driver groups the staged files of each dataset (shard results, rejects of the split tasks and of
dedup, failed shards) into groups of about target_file_bytes and runs one `write_part` per group; it
gets back the file's path, size, row count, statistics (from the footer just written) and schema, plus
the figures the report shows: the aggregates the dataset's declaration names
(ray_cluster.processors.outputs), run over the rows as they are written. It never reads a dataset itself.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ray_cluster.cluster import node_id
from tasks.ingest import staged_rejects
from tasks.staged import read_bucket
from xlmflow import schemas, storage
from xlmflow.stats import file_stats


def part_uri(out: str, dataset: str, date: str, run_id: str, index: int) -> str:
    """Named as tasks.collect's debris check expects (`part-<run 8 hex>-<n>.parquet`)."""
    from tasks.collect import partition_dir  # collect imports this module (the partition's owner moves it)

    return storage.join(partition_dir(out, dataset, date), f"part-{run_id[:8]}-{index:05d}.parquet")


def _tables(src: dict) -> Iterator:
    """The tables of one staged source."""
    kind = src["kind"]
    if kind == "table":  # in memory (tests, benchmarks)
        yield src["table"]
    elif kind == "ipc":
        yield storage.read_table_ipc(src["uri"])
    elif kind == "batches":
        for b in read_bucket(src["uri"], src["index"]):
            yield pa.Table.from_batches([b])
    elif kind == "split_rejects":
        offsets = {int(k): v for k, v in src["offsets"].items()}
        yield schemas.rejects_table(list(staged_rejects(src["uri"], src["index"], offsets)))
    elif kind == "failed":
        yield schemas.rejects_table(shard_failed_rejects(src["shard"], src["error"]))
    else:
        raise ValueError(f"unknown staged source {kind!r}")


def shard_failed_rejects(shard: dict, error: str) -> list[dict]:
    t = storage.read_table_ipc(shard["uri"])
    text_col = "text" if "text" in t.column_names else "src"
    return [
        schemas.make_reject(
            r["source"],
            r["source_row"],
            "shard_failed",
            f"shard {shard['shard_id']} failed after retries: {error}; rerun with --force",
            r[text_col],
        )
        for r in t.select(["source", "source_row", text_col]).to_pylist()
    ]


def _nan_columns(t) -> set[str]:  # noqa: ANN001
    """The float columns of `t` holding NaN (their file statistics get no bounds)."""
    return {f.name for f in t.schema if pa.types.is_floating(f.type) and pc.any(pc.is_nan(t[f.name])).as_py()}


def write_part(
    out: str,
    dataset: str,
    uri: str,
    sources: list[dict],
    empty: bytes | None = None,
    aggregates: Sequence = (),
) -> dict:
    """Write one Parquet file of `dataset` from staged sources (an empty one, with the serialized schema
    `empty`, when there are none); returns its file entry, schema and the results of `aggregates`
    (the dataset's declared ones: each `start`/`add`/`result`, returned under its `key`)."""
    t0 = time.perf_counter()
    states = [a.start() for a in aggregates]
    with storage.writing(uri) as path:
        rows, schema, nan, footer = _write_file(path, dataset, sources, empty, aggregates, states)
        size = os.path.getsize(path)
    figures = {a.key: r for a, st in zip(aggregates, states, strict=True) if (r := a.result(st)) is not None}
    return {
        "file": {
            "path": uri[len(out.rstrip("/")) + 1 :],
            "rows": rows,
            "bytes": size,
            "mtime": int(time.time() * 1000),
            "stats": file_stats(footer, schema, nan),
        },
        "schema": schema.serialize().to_pybytes(),
        "node_id": node_id(),
        "seconds": round(time.perf_counter() - t0, 3),
        **figures,
    }


def _write_file(
    path: str, dataset: str, sources: list[dict], empty: bytes | None, aggregates: Sequence, states: list
) -> tuple:
    """Write the rows of `sources` to `path`, running the aggregates over them: (rows, schema, NaN
    columns, the footer's metadata: the statistics the writer put in the file)."""
    rows, schema, nan, writer = 0, None, set(), None
    try:
        for src in sources:
            for t in _tables(src):
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
                for a, st in zip(aggregates, states, strict=True):
                    a.add(st, t)
        if writer is None:
            if empty is None:
                raise ValueError(f"no rows and no schema for an empty file of {dataset}")
            schema = schemas.file_schema(pa.ipc.read_schema(pa.py_buffer(empty)))
            writer = pq.ParquetWriter(path, schema, compression="zstd")
            writer.write_table(schema.empty_table())
    finally:
        if writer is not None:
            writer.close()
    return rows, schema, nan, writer.writer.metadata


def write_table(out: str, dataset: str, date: str, run_id: str, table, index: int = 0) -> tuple[dict, object]:  # noqa: ANN001
    """One in-memory table as a part file of `dataset`: (file entry, schema)."""
    r = write_part(
        out,
        dataset,
        part_uri(out, dataset, date, run_id, index),
        [{"kind": "table", "table": table}],
        table.schema.serialize().to_pybytes(),
    )
    return r["file"], pa.ipc.read_schema(pa.py_buffer(r["schema"]))


def plan_parts(sources: list[tuple[dict, int]], target_bytes: int) -> list[list[dict]]:
    """Group (source, estimated bytes) into parts of about target_bytes, in order; at least one part."""
    parts: list[list[dict]] = [[]]
    size = 0
    for src, nbytes in sources:
        if parts[-1] and size + nbytes > target_bytes:
            parts.append([])
            size = 0
        parts[-1].append(src)
        size += nbytes
    return parts
