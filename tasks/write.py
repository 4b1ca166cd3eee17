"""Writer tasks: the final Parquet files of a dataset, written on the cluster from staged results.

The driver groups the staged files of each dataset (shard results, rejects of the split tasks and of
dedup, failed shards) into groups of about target_file_bytes and runs one `write_part` per group; it
gets back the file's path, size, row count, statistics (from the footer just written) and schema, plus
the figures the report shows: the aggregates the dataset's declaration names
(ray_cluster.outputs), run over the rows as they are written. It never reads a dataset itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import pyarrow as pa

from xlmflow import schemas, storage
from xlmflow.part_files import write_parquet
from xlmflow.ray_cluster.cluster import node_id
from xlmflow.records import WrittenPart
from xlmflow.tasks.ingest import staged_rejects
from xlmflow.tasks.staged import read_bucket


def _tables(src: dict) -> Iterator:
    """The tables of one staged source."""
    kind = src["kind"]
    if kind == "ipc":
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


def write_part(
    out: str,
    dataset: str,
    uri: str,
    sources: list[dict],
    empty: bytes | None = None,
    aggregates: Sequence = (),
) -> WrittenPart:
    """Write one Parquet file of `dataset` from staged sources (an empty one, with the serialized schema
    `empty`, when there are none); returns its file entry, schema and the results of `aggregates`
    (the dataset's declared ones: each `start`/`add`/`result`, returned under its `key`)."""
    t0 = time.perf_counter()
    states = [a.start() for a in aggregates]

    def seen(t: pa.Table) -> None:
        for a, state in zip(aggregates, states, strict=True):
            a.add(state, t)

    written = write_parquet(out, uri, (t for src in sources for t in _tables(src)), empty, seen)
    figures = {a.key: r for a, st in zip(aggregates, states, strict=True) if (r := a.result(st)) is not None}
    return WrittenPart(
        dataset=dataset,
        file=written.entry,
        schema=written.schema.serialize().to_pybytes(),
        node_id=node_id(),
        seconds=round(time.perf_counter() - t0, 3),
        figures=figures,
    )


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
