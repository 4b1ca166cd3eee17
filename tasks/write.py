"""Writer tasks: the final Parquet files of a dataset, written on the cluster from staged results.

The driver groups the staged files of each dataset (shard results, rejects of the split tasks and of
dedup, failed shards) into groups of about target_file_bytes and runs one `write_part` per group; it
gets back the file's path, size, row count, statistics (from the footer just written) and schema, plus
the few figures the report shows, and commits that file list. It never reads a dataset itself.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator

from xlmflow import schemas, storage
from xlmflow.part_files import part_uri, write_parquet  # noqa: F401 - part_uri: part of this module's interface

QE_SAMPLE = 4096  # QE scores a part returns for the partition's quantiles: all of them, or quantiles


def _tables(src: dict) -> Iterator:
    """The tables of one staged source."""
    import pyarrow as pa

    from tasks.staged import read_bucket

    kind = src["kind"]
    if kind == "table":  # in memory (tests, benchmarks)
        yield src["table"]
    elif kind == "ipc":
        yield storage.read_table_ipc(src["uri"])
    elif kind == "batches":
        for b in read_bucket(src["uri"], src["index"]):
            yield pa.Table.from_batches([b])
    elif kind == "split_rejects":
        from tasks.ingest import staged_rejects

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


def write_part(out: str, dataset: str, uri: str, sources: list[dict], empty: bytes | None = None) -> dict:
    """Write one Parquet file of `dataset` from staged sources (an empty one, with the serialized schema
    `empty`, when there are none); returns its file entry, schema and report figures."""
    import pyarrow as pa

    from ray_cluster.cluster import node_id

    t0 = time.perf_counter()
    labels: collections.Counter[str] = collections.Counter()
    reasons: collections.Counter[str] = collections.Counter()
    scores: list = []

    def seen(t) -> None:  # noqa: ANN001 - the figures the report shows
        if "label" in t.column_names and dataset != "rejects":
            labels.update(t["label"].to_pylist())
        elif dataset == "rejects":
            reasons.update(t["reason"].to_pylist())
        elif dataset == "qe":
            scores.append(t["score"])

    written = write_parquet(out, uri, (t for src in sources for t in _tables(src)), empty, seen)
    extra: dict = {}
    if labels:
        extra["labels"] = dict(labels)
    if dataset == "rejects":
        extra["rejects_by_reason"] = dict(reasons)
    if scores:
        import pyarrow.compute as pc

        s = pc.drop_null(pa.chunked_array(scores))
        if len(s) > QE_SAMPLE:
            s = pc.quantile(s, q=[i / QE_SAMPLE for i in range(QE_SAMPLE + 1)])
        extra["qe_scores"] = {"n": len(pc.drop_null(pa.chunked_array(scores))), "sample": s.to_pylist()}
    return {
        "file": written.entry,
        "schema": written.schema.serialize().to_pybytes(),
        "node_id": node_id(),
        "seconds": round(time.perf_counter() - t0, 3),
        **extra,
    }


def write_table(out: str, dataset: str, date: str, run_id: str, table, index: int = 0) -> tuple[dict, object]:  # noqa: ANN001
    """One in-memory table as a part file of `dataset`: (file entry, schema)."""
    import pyarrow as pa

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
