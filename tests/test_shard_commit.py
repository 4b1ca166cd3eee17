"""Sharding and the storage primitives the commit protocol relies on (local and S3)."""

import pyarrow as pa

from tests.tables import write_parquet_object
from xlmflow import schemas, storage
from xlmflow.tasks.shard import ShardWriter, plan_shards


def _docs(n: int, size: int = 10) -> pa.Table:
    rows = [
        {
            "doc_id": f"d{i}",
            "text": "x" * size,
            "lang_hint": None,
            "n_chars": size,
            "source": "f",
            "source_row": i + 1,
            "meta": "{}",
        }
        for i in range(n)
    ]
    return pa.Table.from_pylist(rows, schema=schemas.STAGED_DOCS)


def write_shards(table: pa.Table, staging: str, shard_chars: int) -> list:
    """One table as the shards of bucket 0, as a content reducer writes them."""
    w = ShardWriter(0, table.schema, shard_chars, staging)
    w.add(table)
    return w.close()


def test_plan_shards_respects_budget_and_covers_every_row():
    ranges = plan_shards([3, 3, 3, 10, 1, 1], budget=6)
    assert ranges == [(0, 2), (2, 3), (3, 4), (4, 6)]
    assert plan_shards([], 5) == []


def test_shards_are_deterministic(tmp_path):
    t = _docs(25)
    a = write_shards(t, str(tmp_path / "s1"), shard_chars=100)
    b = write_shards(t, str(tmp_path / "s2"), shard_chars=100)
    assert [r.shard_id for r in a] == [r.shard_id for r in b]
    assert sum(r.rows for r in a) == 25 and all(r.chars <= 100 for r in a)
    again = write_shards(t, str(tmp_path / "s1"), shard_chars=100)  # a resumed run
    assert [r.shard_id for r in again] == [r.shard_id for r in a]
    assert [r.shard_id for r in a] == sorted(r.shard_id for r in a)  # ids sort in row order
    back = pa.concat_tables(storage.read_table_ipc(r.uri) for r in a)
    assert back.equals(t)


def test_storage_roundtrip_on_moto_s3(s3_bucket):
    t = _docs(3)
    uri = storage.join(s3_bucket, "x", "a.parquet")
    size = write_parquet_object(uri, t)
    assert size > 0 and storage.exists(uri)
    storage.write_json(storage.join(s3_bucket, "m.json"), {"k": 1})
    assert storage.read_json(storage.join(s3_bucket, "m.json")) == {"k": 1}
    assert storage.list_files(storage.join(s3_bucket, "x")) == [uri]
    storage.remove([uri])
    assert storage.list_files(storage.join(s3_bucket, "x")) == []
