"""Cut accepted records into Arrow IPC shards with deterministic ids, under the run's staging area."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

from xlmflow import storage


@dataclass(frozen=True)
class ShardRef:
    shard_id: str
    uri: str
    rows: int
    chars: int
    first_row: int  # offset of the shard's first record in the ingest table (for ordering)

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


def write_shards(table, staging: str, shard_chars: int, id_column: str = "doc_id") -> list[ShardRef]:  # noqa: ANN001
    """Write shards; a shard that already exists (same id => same rows) is not rewritten on resume."""
    import pyarrow.compute as pc

    text_cols = [c for c in ("text", "src", "mt") if c in table.column_names]
    lengths = [0] * table.num_rows
    for c in text_cols:
        for i, n in enumerate(pc.utf8_length(table[c]).to_pylist()):
            lengths[i] += n or 0
    existing = set(storage.list_files(storage.join(staging, "shards")))
    refs = []
    for idx, (a, b) in enumerate(plan_shards(lengths, shard_chars)):
        part = table.slice(a, b - a)
        ids = part[id_column].to_pylist()
        digest = hashlib.sha1("\n".join(ids).encode("utf-8", "replace")).hexdigest()[:10]
        shard_id = f"{idx:05d}-{digest}"
        uri = storage.join(staging, "shards", f"{shard_id}.arrow")
        if uri not in existing:
            storage.write_table_ipc(uri, part)
        refs.append(ShardRef(shard_id, uri, part.num_rows, sum(lengths[a:b]), a))
    return refs
