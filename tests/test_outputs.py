"""Dataset declarations: the writer runs the aggregates a dataset declares over the rows it writes, and
returns their results (and nothing else) with the file entry."""

from __future__ import annotations

import pyarrow as pa

from xlmflow import storage
from xlmflow.part_files import part_uri
from xlmflow.ray_cluster.outputs import LabelCounts, ScoreSample
from xlmflow.tasks.write import write_part


def _staged(tmp_path, name: str, table: pa.Table) -> dict:
    """A shard result as actors stage it (Arrow IPC), as a writer task's source."""
    uri = str(tmp_path / "staged" / f"{name}.arrow")
    storage.write_table_ipc(uri, table)
    return {"kind": "ipc", "uri": uri}


def test_the_writer_returns_what_the_declared_aggregates_collect(tmp_path):
    out = str(tmp_path)
    n = 10_000  # more scores than one sample holds: the part returns quantiles, and its count
    t = pa.table({"label": ["a", "b", "a", None] * (n // 4), "score": pa.array([float(i) for i in range(n)])})
    t = t.set_column(1, "score", pa.array([None, *range(1, n)], pa.float32()))
    sources = [_staged(tmp_path, "a", t.slice(0, 3000)), _staged(tmp_path, "b", t.slice(3000))]
    aggs = (LabelCounts(), ScoreSample("score", key="scores", size=100))
    got = write_part(out, "x", part_uri(out, "x", "2026-11-01", "0" * 32, 0), sources, None, aggs)
    assert got.file["rows"] == n
    assert got.figures["labels"] == {"a": n // 2, "b": n // 4, None: n // 4}
    sample = got.figures["scores"]["sample"]
    assert (
        got.figures["scores"]["n"] == n - 1
        and len(sample) == 101
        and (sample[0], sample[-1]) == (1.0, n - 1.0)
    )

    src = [_staged(tmp_path, "c", t.slice(0, 50))]
    few = write_part(out, "x", part_uri(out, "x", "2026-11-01", "0" * 32, 1), src, None, aggs)
    assert few.figures["scores"] == {"n": 49, "sample": [float(i) for i in range(1, 50)]}  # all of them
    plain = write_part(out, "y", part_uri(out, "y", "2026-11-01", "0" * 32, 0), sources)
    assert plain.figures == {}  # no declaration, no figures


def test_the_manifest_figures_come_from_the_declared_aggregates(tmp_path):
    """dataset_stats asks each dataset's aggregates to summarize the parts' results: label counts summed
    over parts under `labels` by dataset, score quantiles under `<dataset>_quantiles`."""
    from xlmflow.ray_cluster.outputs import Dataset
    from xlmflow.tasks.report import dataset_stats

    out = str(tmp_path)
    ents = pa.table({"label": ["PER", "LOC", "PER"]})
    scores = pa.table({"score": pa.array([0.1, 0.5, 0.9], pa.float32())})
    declared = {
        "entities": Dataset(ents.schema, (LabelCounts(),)),
        "qe": Dataset(scores.schema, (ScoreSample("score", key="qe_scores"),)),
        "plain": Dataset(ents.schema),
    }
    parts = {
        name: [
            write_part(
                out,
                name,
                part_uri(out, name, "2026-11-01", "0" * 32, i),
                [_staged(tmp_path, f"{name}{i}", t)],
                None,
                declared[name].aggregates,
            )
            for i in range(2)
        ]
        for name, t in (("entities", ents), ("qe", scores), ("plain", ents))
    }
    stats = dataset_stats(parts, declared)
    assert stats["labels"] == {"entities": {"LOC": 2, "PER": 4}}
    assert stats["qe_quantiles"]["p50"] == 0.5 and set(stats["qe_quantiles"]) == {
        "p05",
        "p25",
        "p50",
        "p75",
        "p95",
    }
    assert set(stats) == {"labels", "qe_quantiles"}
