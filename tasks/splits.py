"""Plan the input splits of a partition from the input listing (paths and sizes only, nothing read).

A split is the work of one ingest task: one or more *pieces*, each a whole file or a byte range of one.
- Uncompressed JSON lines larger than `split_bytes` are cut into byte ranges; a range owns the lines
  that start in it, so every line is read by exactly one task (tasks.readers.read_piece).
- Parquet files larger than `split_bytes` are cut the same way; a range owns the row groups whose first
  page starts in it.
- Compressed files, CSV/TSV (a quoted field may hold newlines) and .txt are one piece each. Small files
  are packed together into splits of about `split_bytes`, so a directory of many small files does not
  become as many tasks and staging objects.
A file over max_file_bytes is never cut: the sequential reader keeps the rows before the limit and
rejects the rest as one row, as it does for every format.

Splits, their ids and the dedup bucket count are a function of the listing and the settings alone, so
a rerun after a crash finds the finished splits of the first attempt.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass

from xlmflow.tasks.fingerprint import fingerprint
from xlmflow.tasks.inputs import check_output_apart, expand_inputs
from xlmflow.tasks.readers import format_of

MAX_BUCKETS = 64


@dataclass(frozen=True)
class Piece:
    index: int  # position in the whole partition: the order of rows for dedup ("first" wins)
    uri: str
    start: int | None  # byte range, or None for the whole file
    end: int | None
    file_index: int
    part: int  # index of this range in its file (0 for whole files)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Split:
    index: int
    split_id: str
    pieces: tuple[Piece, ...]
    bytes: int

    def to_dict(self) -> dict:
        return {"index": self.index, "split_id": self.split_id, "bytes": self.bytes,
                "pieces": [p.to_dict() for p in self.pieces]}  # fmt: skip


@dataclass(frozen=True)
class Plan:
    splits: tuple[Split, ...]
    pieces: tuple[Piece, ...]
    buckets: int
    plan_id: str  # keys the staging of this plan: a changed listing never reuses stale splits


def list_inputs(inputs, out: str | None = None) -> list[dict]:  # noqa: ANN001
    """The input files with size and version (ETag or mtime): tasks.fingerprint's entries. With `out`,
    a ConfigError if the run would read its own outputs."""
    files = expand_inputs(inputs)
    if out is not None:
        check_output_apart(inputs, out)
    return fingerprint(files)


def plan_splits(listing: list[dict], split_bytes: int, max_file_bytes: int, buckets: int | None) -> Plan:
    pieces: list[Piece] = []
    for fi, entry in enumerate(listing):
        uri, size = entry["path"], entry["size"]
        kind, comp = format_of(uri) or ("", None)
        cuttable = kind in ("jsonl", "parquet") and comp is None and size <= max_file_bytes
        if cuttable and size > split_bytes:
            parts = math.ceil(size / split_bytes)
            step = math.ceil(size / parts)
            for k in range(parts):
                a, b = k * step, min(size, (k + 1) * step)
                pieces.append(Piece(len(pieces), uri, a, b, fi, k))
        else:
            pieces.append(Piece(len(pieces), uri, None, None, fi, 0))
    sizes = {e["path"]: e["size"] for e in listing}
    groups: list[list[Piece]] = []
    acc = 0
    for p in pieces:
        size = sizes[p.uri] if p.start is None else p.end - p.start  # type: ignore[operator]
        if not groups or p.start is not None or acc + size > split_bytes or groups[-1][-1].start is not None:
            groups.append([])
            acc = 0
        groups[-1].append(p)
        acc += size
    versions = {e["path"]: [e.get("size"), e.get("etag"), e.get("mtime")] for e in listing}
    splits = []
    for i, g in enumerate(groups):
        key = json.dumps([[p.uri, p.start, p.end, versions[p.uri]] for p in g]).encode()
        nbytes = sum(sizes[p.uri] if p.start is None else p.end - p.start for p in g)  # type: ignore[operator]
        splits.append(Split(i, f"{i:05d}-{hashlib.sha1(key).hexdigest()[:10]}", tuple(g), nbytes))
    total = sum(sizes.values())
    n_buckets = buckets or max(1, min(MAX_BUCKETS, math.ceil(total / (4 * split_bytes))))
    plan_key = json.dumps([[s.split_id for s in splits], n_buckets]).encode()
    return Plan(tuple(splits), tuple(pieces), n_buckets, hashlib.sha1(plan_key).hexdigest()[:12])
