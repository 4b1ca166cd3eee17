"""Cut accepted records into Arrow IPC shards with deterministic ids, under the run's staging area.

Shard ids sort in processing order: `<bucket>-<n>-<sha1 of their ids>`."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.compute as pc

from xlmflow import storage


@dataclass(frozen=True)
class ShardRef:
    shard_id: str
    uri: str
    rows: int
    chars: int

    def to_dict(self) -> dict:
        return asdict(self)


def staging_root(out: str, date: str, config_hash: str) -> str:
    """Staging is keyed by date and config hash: a changed config never reuses stale shard results."""
    return storage.join(out, "_staging", f"date={date}", config_hash)


def plan_shards(lengths: list[int], budget: int) -> list[tuple[int, int]]:
    """(start, stop) row ranges, each <= budget characters (a single longer row gets its own shard)."""
    ranges, start, acc = [], 0, 0
    for i, n in enumerate(lengths):
        if i > start and acc + n > budget:
            ranges.append((start, i))
            start, acc = i, 0
        acc += n
    if start < len(lengths):
        ranges.append((start, len(lengths)))
    return ranges


class ShardWriter:
    """Kept rows of one content bucket as Arrow IPC shards of at most shard_chars (a longer row alone),
    named by bucket, position and a hash of their ids: the same input gives the same shards."""

    def __init__(self, bucket: int, schema, budget: int, staging: str) -> None:  # noqa: ANN001
        self.bucket, self.schema, self.budget, self.staging = bucket, schema, budget, staging
        self.buf: list = []
        self.chars = 0
        self.refs: list[ShardRef] = []

    def add(self, table) -> None:  # noqa: ANN001
        self.buf.append(table)
        self.chars += sum(_lengths(table))
        if self.chars >= 2 * self.budget:
            self._write(final=False)

    def close(self) -> list[ShardRef]:
        self._write(final=True)
        return self.refs

    def _write(self, final: bool) -> None:
        if not self.buf:
            return
        table = pa.concat_tables(self.buf)
        lengths = _lengths(table)
        ranges = plan_shards(lengths, self.budget)
        if not final:
            ranges = ranges[:-1]  # the last one may still grow
        for a, b in ranges:
            part = table.slice(a, b - a)
            ids = part.column(0).to_pylist()
            digest = hashlib.sha1("\n".join(ids).encode("utf-8", "replace")).hexdigest()[:10]
            k = len(self.refs)
            sid = f"{self.bucket:03d}-{k:05d}-{digest}"
            uri = storage.join(self.staging, "shards", f"{sid}.arrow")
            storage.write_table_ipc(uri, part.combine_chunks())
            self.refs.append(ShardRef(sid, uri, part.num_rows, sum(lengths[a:b])))
        rest = ranges[-1][1] if ranges else 0
        self.buf = [table.slice(rest)] if rest < table.num_rows else []
        self.chars = sum(lengths[rest:])


def _lengths(table) -> list[int]:  # noqa: ANN001

    if "n_chars" in table.column_names:
        return [n or 0 for n in table["n_chars"].to_pylist()]
    a = pc.utf8_length(table["src"]).to_pylist()
    b = pc.utf8_length(table["mt"]).to_pylist()
    return [x + y for x, y in zip(a, b, strict=True)]
