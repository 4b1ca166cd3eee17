"""Exact dedup of a partition as two staged hash exchanges, computed by reducer tasks, no central table.

Rule (deterministic, whatever the number of splits or buckets), over all rows in input order (sorted
files, then row), after validation:
1. id stage, over all rows: the first row with each id wins; a later row with that id is `duplicate_id`
   ("id 'x' was already used by F row N with other content") when its content differs, and `duplicate`
   ("same content as F row N (x)") when it is the same;
2. content stage, over the rows the id stage kept: the first row of each normalized content wins; the
   others are `duplicate` ("same content as F row N (id of that row)").
So for rows (a,X), (b,X), (b,Y): the id stage rejects (b,Y) as duplicate_id of row 2, the content stage
rejects (b,X) as duplicate of row 1; only row 1 is kept. (A sequential rule that looks only at kept
rows would keep rows 1 and 3; no exchange of hashed buckets can compute that one in general.)

Split tasks write each row twice: its key (id, digest, position) into the id bucket `crc32(id) % B`,
the row itself into the content bucket `digest % B`. Id reducer b reads bucket b of every split in
split order (= input order), so the first row it sees of an id is the first in the input; its losers go
out bucketed by content bucket. Content reducer c merges those losers (each stream is in input order)
with bucket c of every split's rows, rejects them, dedups the rest by content and writes the shards.
Memory per reducer: one entry per distinct id (or content) of its bucket, plus one batch; a million
copies of one line are one entry.
"""

from __future__ import annotations

import collections
import heapq
import time
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from xlmflow import schemas, storage
from xlmflow.settings import RunSettings
from xlmflow.tasks.shard import ShardWriter
from xlmflow.tasks.staged import BucketWriter, read_bucket


def piece_table(plan, summaries: list[dict]) -> list[dict]:  # noqa: ANN001
    """uri and row offset of every piece: the lines of the earlier ranges of its file (a prefix sum
    over what the split tasks counted)."""
    spans: dict[int, int] = {}
    for s in summaries:
        spans.update({int(k): v for k, v in s["spans"].items()})
    table, seen = [], collections.Counter()
    for p in plan.pieces:
        table.append({"uri": p.uri, "offset": seen[p.uri]})
        seen[p.uri] += spans[p.index]
    return table


def _dir(staging: str) -> str:
    return storage.join(staging, "ingest", "dedup")


def reduce_ids(b: int, summaries: list[dict], pieces: list[dict], buckets: int, staging: str) -> dict:
    """The id stage for id bucket b; returns where its losers are, by content bucket. Idempotent."""
    done = storage.join(_dir(staging), f"ids-{b:03d}.json")
    if storage.exists(done):
        return storage.read_json(done)
    uri = storage.join(_dir(staging), f"ids-{b:03d}.arrow")
    w = BucketWriter(uri, schemas.DEDUP_LOSERS, buckets)
    first: dict[str, tuple[bytes, int, int]] = {}
    try:
        for s in summaries:
            for batch in read_bucket(s["uris"]["keys"], s["index_by_bucket"]["keys"][b]):
                cols = [batch.column(i).to_pylist() for i in range(5)]
                for rid, digest, piece, row, cb in zip(*cols, strict=True):
                    prev = first.get(rid)
                    if prev is None:
                        first[rid] = (digest, piece, row)
                        continue
                    p = pieces[prev[1]]
                    where = f"{p['uri']} row {p['offset'] + prev[2]}"
                    if prev[0] != digest:
                        reason, detail = (
                            "duplicate_id",
                            f"id {rid!r} was already used by {where} with other content",
                        )
                    else:
                        reason, detail = "duplicate", f"same content as {where} ({rid})"
                    w.add(cb, (piece, row, reason, detail))
        index = w.close()
    except BaseException:
        w.abort()
        raise
    summary = {"bucket": b, "uri": uri, "index_by_bucket": index, "losers": w.rows}
    storage.write_json(done, summary)
    return summary


def _losers(losers: list[dict], c: int) -> Iterator[tuple]:
    """The id stage's losers of content bucket c, in input order (each reducer's stream already is)."""

    def stream(lo: dict) -> Iterator[tuple]:
        for batch in read_bucket(lo["uri"], lo["index_by_bucket"][c]):
            yield from zip(*(batch.column(i).to_pylist() for i in range(4)), strict=True)

    return heapq.merge(*(stream(lo) for lo in losers), key=lambda t: (t[0], t[1]))


def reduce_content(c: int, summaries: list[dict], losers: list[dict], pieces: list[dict], settings_json: str,
                   staging: str) -> dict:  # fmt: skip
    """The content stage for content bucket c: reject the id stage's losers and the content duplicates,
    write the kept rows as shards of about shard_chars; returns the shard refs. Idempotent."""
    done = storage.join(_dir(staging), f"content-{c:03d}.json")
    if storage.exists(done):
        return storage.read_json(done)
    t0 = time.perf_counter()
    settings = RunSettings.model_validate_json(settings_json)
    schema = schemas.STAGED_DOCS if settings.mode == "docs" else schemas.STAGED_PAIRS
    offsets = pa.array([p["offset"] for p in pieces], pa.int64())
    rej_uri = storage.join(_dir(staging), f"rejects-{c:03d}.arrow")
    rej = BucketWriter(rej_uri, schemas.REJECTS, 1)
    shards = ShardWriter(c, schema, settings.shard_chars, staging)
    decide = _ContentDecisions(_losers(losers, c), pieces, rej)
    try:
        for s in summaries:
            for batch in read_bucket(s["uris"]["rows"], s["index_by_bucket"]["rows"][c]):
                kept = batch.filter(pa.array(decide.keep(batch), pa.bool_()))
                if kept.num_rows:
                    rows_abs = pc.add(kept["source_row"], offsets.take(kept["_piece"]))
                    cols = [rows_abs if f.name == "source_row" else kept[f.name] for f in schema]
                    shards.add(pa.Table.from_batches([pa.RecordBatch.from_arrays(cols, schema=schema)]))
        if decide.nxt is not None:
            raise RuntimeError(f"dedup bucket {c}: a loser of the id stage has no row: {decide.nxt}")  # a bug
        refs = shards.close()
        rej_index = rej.close()
    except BaseException:
        rej.abort()
        raise
    summary = {
        "bucket": c,
        "shards": [r.to_dict() for r in refs],
        "accepted": sum(r.rows for r in refs),
        "rejects_uri": rej_uri,
        "rejects_index": rej_index[0],
        "rejects": rej.rows,
        "rejects_by_reason": dict(sorted(decide.by_reason.items())),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    storage.write_json(done, summary)
    return summary


class _ContentDecisions:
    """The content stage over one bucket's rows in input order: a loser of the id stage is rejected with
    its reason, a row whose content was kept before is a `duplicate`, every other row is kept."""

    def __init__(self, lose: Iterator[tuple], pieces: list[dict], rej: BucketWriter) -> None:
        self.lose, self.pieces, self.rej = lose, pieces, rej
        self.nxt = next(lose, None)  # the next loser, in input order
        self.first: dict[bytes, tuple[str, str]] = {}  # digest -> (where, id) of the row kept
        self.by_reason: collections.Counter[str] = collections.Counter()

    def keep(self, batch) -> list[bool]:  # noqa: ANN001 - a staged rows batch
        """Which rows of the batch are kept; the others are written to the rejects."""
        ids = batch.column(0).to_pylist()
        pcs, rows = batch["_piece"].to_pylist(), batch["source_row"].to_pylist()
        digests, raws = batch["_digest"].to_pylist(), batch["_raw"].to_pylist()
        keep = [False] * len(ids)
        nxt, first, rej = self.nxt, self.first, self.rej
        for i, (piece, row) in enumerate(zip(pcs, rows, strict=True)):
            p = self.pieces[piece]
            if nxt is not None and (nxt[0], nxt[1]) == (piece, row):
                rej.add(0, (p["uri"], p["offset"] + row, nxt[2], nxt[3], raws[i]))
                self.by_reason[nxt[2]] += 1
                nxt = next(self.lose, None)
                continue
            hit = first.get(digests[i])
            if hit is not None:
                detail = f"same content as {hit[0]} ({hit[1]})"
                rej.add(0, (p["uri"], p["offset"] + row, "duplicate", detail, raws[i]))
                self.by_reason["duplicate"] += 1
                continue
            first[digests[i]] = (f"{p['uri']} row {p['offset'] + row}", ids[i])
            keep[i] = True
        self.nxt = nxt
        return keep
