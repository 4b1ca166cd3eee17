"""The stage records: plain data that Ray and Prefect pass as they are, never edited by a later stage."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from xlmflow.records import IngestResult, ProcessResult, RunFacts


def test_records_pickle_whole_and_are_frozen():
    ingest = IngestResult(
        staging="/o/_staging/date=2026-11-01/cfg",
        root="/o/_staging/date=2026-11-01/cfg/plan-1",
        listing=[{"path": "/in/a.jsonl", "size": 10}],
        splits=[
            {"input_rows": 5, "accepted": 4, "rejects": 1},
            {"input_rows": 3, "accepted": 3, "rejects": 0},
        ],
        pieces=[{"offset": 0}],
        losers=[{"losers": 2}],
        buckets=2,
        seconds={"read": 0.1, "dedup_ids": 0.2},
    )
    processed = ProcessResult(
        shards=[{"shard_id": "s1", "chars": 40}, {"shard_id": "s2", "chars": 2}],
        done={"s1": {"counts": {"documents": 4}}},
        failed={"s2": "boom"},
        actors=[],
        content=[{"accepted": 4}, {"accepted": 1}],
    )
    facts = RunFacts("r" * 32, "0.1", "2026-11-01T00:00:00", None, {"documents": None})
    for record in (ingest, processed, facts):
        assert pickle.loads(pickle.dumps(record)) == record
        with pytest.raises(dataclasses.FrozenInstanceError):
            record.seconds = {}  # type: ignore[misc]
    assert (ingest.input_rows, ingest.expected_documents) == (8, 5)
    assert (processed.chars, processed.accepted) == (42, 5)
    assert facts.as_manifest()["table_versions_at_start"] == {"documents": None}
