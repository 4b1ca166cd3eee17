"""A partition's ingest as a run does it, read back for tests: the split tasks and both dedup stages run
on the test's Ray through tasks.ingest_pipeline (`read_inputs`, then the content reducers through
`ContentFeed`), and the staged shards and rejects are read back as one table in input order."""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass

import pyarrow as pa
import ray

from xlmflow import schemas, storage
from xlmflow.tasks.ingest import staged_rejects
from xlmflow.tasks.ingest_pipeline import ContentFeed, read_inputs
from xlmflow.tasks.staged import read_bucket


@dataclass
class IngestResult:
    """What a partition's inputs stage to."""

    table: pa.Table  # schemas.STAGED_DOCS or schemas.STAGED_PAIRS, in input order
    rejects: list[dict]  # schemas.make_reject rows, in input order
    input_rows: int  # == table.num_rows + len(rejects)
    input_files: list[str]

    def counts(self) -> dict:
        by_reason = Counter(r["reason"] for r in self.rejects)
        return {
            "input_rows": self.input_rows,
            "accepted": self.table.num_rows,
            "rejects": len(self.rejects),
            "rejects_by_reason": dict(sorted(by_reason.items())),
        }


def ingest(settings) -> IngestResult:  # noqa: ANN001
    """Needs a Ray (the `ray_local` fixture, or a connection to a test's cluster)."""
    assert ray.is_initialized(), "the staged ingest runs on Ray: use the ray_local fixture"
    with tempfile.TemporaryDirectory(prefix="xlmflow-ingest-") as staging:
        ing = read_inputs(settings, staging)
        feed = ContentFeed(ing["runner"], ing["content_calls"], window=1 << 20)
        while not feed.exhausted:
            feed.poll(0, block=True)
        tables = [storage.read_table_ipc(s["uri"]) for p in feed.summaries for s in p["shards"]]
        rejects = [r for s in ing["splits"] for r in read_split_rejects(s, ing["pieces"])]
        rejects += [r for p in feed.summaries for r in _content_rejects(p)]
    schema = schemas.STAGED_DOCS if settings.mode == "docs" else schemas.STAGED_PAIRS
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    files = [e["path"] for e in ing["listing"]]
    order = {u: i for i, u in enumerate(files)}
    if table.num_rows:
        keys = list(
            zip([order[s] for s in table["source"].to_pylist()], table["source_row"].to_pylist(), strict=True)
        )
        table = table.take(sorted(range(len(keys)), key=keys.__getitem__))
    rejects.sort(key=lambda r: (order[r["source"]], -1 if r["source_row"] is None else r["source_row"]))
    res = IngestResult(table, rejects, sum(s["input_rows"] for s in ing["splits"]), files)
    assert res.input_rows == table.num_rows + len(res.rejects), f"ingest lost rows: {res.counts()}"
    return res


def read_split_rejects(summary: dict, pieces: list[dict]):  # noqa: ANN201
    """A split's rejects, with source_row as the row in the whole file."""
    offsets = {int(k): pieces[int(k)]["offset"] for k in summary["spans"]}
    yield from staged_rejects(summary["uris"]["rejects"], summary["index_by_bucket"]["rejects"][0], offsets)


def _content_rejects(summary: dict):  # noqa: ANN202
    """A content reducer's rejects (duplicates)."""
    for batch in read_bucket(summary["rejects_uri"], summary["rejects_index"]):
        yield from batch.to_pylist()
