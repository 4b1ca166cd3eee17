"""Dataset declarations: the writer runs the aggregates a dataset declares over the rows it writes, and
returns their results (and nothing else) with the file entry."""

from __future__ import annotations

import pyarrow as pa

from xlmflow.ray_cluster.outputs import LabelCounts, ScoreSample
from xlmflow.tasks.write import part_uri, write_part


def test_the_writer_returns_what_the_declared_aggregates_collect(tmp_path):
    out = str(tmp_path)
    n = 10_000  # more scores than one sample holds: the part returns quantiles, and its count
    t = pa.table({"label": ["a", "b", "a", None] * (n // 4), "score": pa.array([float(i) for i in range(n)])})
    t = t.set_column(1, "score", pa.array([None, *range(1, n)], pa.float32()))
    sources = [{"kind": "table", "table": t.slice(0, 3000)}, {"kind": "table", "table": t.slice(3000)}]
    aggs = (LabelCounts(), ScoreSample("score", key="scores", size=100))
    got = write_part(out, "x", part_uri(out, "x", "2026-11-01", "0" * 32, 0), sources, None, aggs)
    assert got["file"]["rows"] == n
    assert got["labels"] == {"a": n // 2, "b": n // 4, None: n // 4}
    sample = got["scores"]["sample"]
    assert got["scores"]["n"] == n - 1 and len(sample) == 101 and (sample[0], sample[-1]) == (1.0, n - 1.0)

    src = [{"kind": "table", "table": t.slice(0, 50)}]
    few = write_part(out, "x", part_uri(out, "x", "2026-11-01", "0" * 32, 1), src, None, aggs)
    assert few["scores"] == {"n": 49, "sample": [float(i) for i in range(1, 50)]}  # all of them
    plain = write_part(out, "y", part_uri(out, "y", "2026-11-01", "0" * 32, 0), sources)
    assert not {"labels", "scores"} & set(plain)  # no declaration, no figures
