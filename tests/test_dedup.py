"""Dedup as staged hash exchanges: the documented id-then-content rule on constructed chains, the same
result however the input is split and bucketed, the sequential ingest's exact result on a hostile
corpus, and flat memory on a million copies of one line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests import hostile_corpus
from tests.staged_ingest import ingest
from xlmflow.ray_cluster.registry import make_settings

# the split tasks and reducers run on Ray, as in a run
pytestmark = pytest.mark.usefixtures("ray_local")


def run(tmp_path, files: dict[str, list], **kw):
    for name, rows in files.items():
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return ingest(make_settings(inputs=[str(tmp_path / n) for n in files], out=str(tmp_path / "out"), **kw))


def outcome(res) -> tuple[list, list]:
    kept = [(r["source"].rsplit("/", 1)[1], r["source_row"]) for r in res.table.to_pylist()]
    rej = [(r["source"].rsplit("/", 1)[1], r["source_row"], r["reason"], r["detail"]) for r in res.rejects]
    return kept, rej


@pytest.mark.parametrize("kw", [{}, {"split_bytes": 40, "dedup_buckets": 5}])
def test_chains_follow_the_documented_rule(tmp_path, kw):
    a = str(tmp_path / "a.jsonl")
    rows = [{"id": "a", "text": "X"}, {"id": "b", "text": "X"}, {"id": "b", "text": "Y"},  # README chain
            {"id": "x", "text": "Q"}, {"id": "y", "text": "Q"}, {"id": "y", "text": "R"}, {"id": "z", "text": "R"},
            {"id": "a", "text": "X"}]  # fmt: skip
    kept, rej = outcome(run(tmp_path, {"a.jsonl": rows}, **kw))
    assert kept == [("a.jsonl", 1), ("a.jsonl", 4), ("a.jsonl", 7)]
    assert rej == [
        ("a.jsonl", 2, "duplicate", f"same content as {a} row 1 (a)"),
        ("a.jsonl", 3, "duplicate_id", f"id 'b' was already used by {a} row 2 with other content"),
        ("a.jsonl", 5, "duplicate", f"same content as {a} row 4 (x)"),
        ("a.jsonl", 6, "duplicate_id", f"id 'y' was already used by {a} row 5 with other content"),
        ("a.jsonl", 8, "duplicate", f"same content as {a} row 1 (a)"),
    ]


def test_result_does_not_depend_on_splits_or_buckets(tmp_path):
    rows = [{"id": f"i{i % 37}", "text": f"t{i % 23}"} for i in range(400)]
    rows += [{"text": f"t{i % 11}"} for i in range(50)]
    files = {"a.jsonl": rows[:200], "b.jsonl": rows[200:]}
    base = outcome(run(tmp_path, files))
    for kw in ({"split_bytes": 100, "dedup_buckets": 7}, {"split_bytes": 1000, "dedup_buckets": 2}):
        assert outcome(run(tmp_path, files, **kw)) == base
    kept, rej = base
    assert len(kept) + len(rej) == 450 and len(kept) == len({r for r in kept})


@pytest.mark.parametrize("kw", [{}, {"split_bytes": 2048, "dedup_buckets": 4}])
def test_hostile_corpus_matches_the_sequential_ingest(tmp_path, kw):
    d = tmp_path / "corpus"
    hostile_corpus.build(d)
    res = ingest(make_settings(inputs=[str(d)], out=str(tmp_path / "out"), **hostile_corpus.SETTINGS, **kw))
    with open(hostile_corpus.EXPECTED, encoding="utf-8") as f:
        expected = json.load(f)
    assert json.loads(json.dumps(hostile_corpus.snapshot(res, d))) == expected


_MEMORY = textwrap.dedent(
    """
    import sys, tempfile
    from xlmflow.tasks import dedup
    from xlmflow.tasks.ingest import read_split
    from xlmflow.tasks.splits import list_inputs, plan_splits
    from xlmflow.ray_cluster.registry import make_settings
    s = make_settings(inputs=[sys.argv[1]], out=sys.argv[2], split_bytes=4 << 20, dedup_buckets=2)
    plan = plan_splits(list_inputs(s.inputs), s.split_bytes, s.max_file_bytes, s.dedup_buckets)
    splits = [read_split(x.to_dict(), plan.buckets, s.model_dump_json(), sys.argv[2]) for x in plan.splits]
    pieces = dedup.piece_table(plan, splits)
    losers = [dedup.reduce_ids(b, splits, pieces, plan.buckets, sys.argv[2]) for b in range(plan.buckets)]
    parts = [dedup.reduce_content(c, splits, losers, pieces, s.model_dump_json(), sys.argv[2]) for c in range(2)]
    kept = sum(p["accepted"] for p in parts)
    rejected = sum(p["rejects"] for p in parts)
    hwm = [int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM")][0]
    print(kept, rejected, len(splits), hwm)
    """
)


def test_copies_of_one_line_keep_memory_flat(tmp_path):
    peaks = {}
    for n in (200_000, 1_000_000):
        path = tmp_path / f"same-{n}.jsonl"
        path.write_bytes(b'{"text": "the same line"}\n' * n)
        out = subprocess.run(
            [sys.executable, "-c", _MEMORY, str(path), str(tmp_path / f"stage-{n}")],
            capture_output=True, text=True, timeout=300, check=True,
        ).stdout.split()  # fmt: skip
        kept, rejected, splits, hwm = map(int, out)
        assert (kept, rejected) == (1, n - 1)
        peaks[n] = hwm
    print("peak RSS KiB by rows:", peaks)
    assert splits > 1  # the file was cut: the copies cross split boundaries
    # 5x the rows, next to no more memory: no per-row state anywhere (a dict of 1M ids alone is ~100 MB;
    # the allocator's own growth measured 17-34 MB on a busy 2-core machine)
    assert peaks[1_000_000] - peaks[200_000] < 48 * 1024, peaks


def test_staging_batches_are_bounded_by_bytes(tmp_path):
    """Rows are flushed by bytes as well as by count (32 MiB of strings): 100 rows of 1 MiB make several
    batches, none much over the bound, where a count of 32k rows alone would hold them all."""
    import pyarrow as pa

    from xlmflow.tasks.staged import BucketWriter, read_bucket

    uri = str(tmp_path / "s.arrow")
    w = BucketWriter(uri, pa.schema([("t", pa.string())]), 2)
    for i in range(100):
        w.add(i % 2, (f"{i:03d}" + "x" * (1 << 20),))
    index = w.close()
    batches = [b for ix in index for b in read_bucket(uri, ix)]
    assert sum(b.num_rows for b in batches) == 100 and len(batches) >= 6
    assert max(b.nbytes for b in batches) <= 34 << 20
    assert [t[:3] for t in pa.Table.from_batches(list(read_bucket(uri, index[1])))["t"].to_pylist()] == [
        f"{i:03d}" for i in range(1, 100, 2)
    ]
