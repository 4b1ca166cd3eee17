"""A deterministic hostile corpus (every reject reason, duplicates across files and across the byte
ranges a split cuts, a quoted CSV, Parquet row groups, UDHR text) and its expected ingest result.

`tests/data/expected_ingest.json` was recorded with the sequential ingest that the distributed one
replaced; the corpus has no dedup chains, where the two rules differ by design (README: dedup).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

from tests.conftest import CORPUS

EXPECTED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "expected_ingest.json")


def _jl(*rows) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def build(d: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    d.mkdir(parents=True, exist_ok=True)
    with open(CORPUS, encoding="utf-8") as f:
        udhr = [json.loads(line) for line in f][:400]
    bad = [
        b'{"text": "broken',
        b"[1, 2]",
        b'"just a string"',
        {"id": "m1"},
        {"text": None},
        {"text": 42},
        {"text": ""},
        {"text": " \t\u3000"},
        b'{"text": "caf\xe9 latin-1"}',
        b'{"text": "lone \\ud800 surrogate"}',
        b'{"id": "\\udc00", "text": "surrogate in id"}',
        {"text": "x" * 3000},  # too_long at max_text_chars=2000
        b'{"text": "' + b"y" * 9000 + b'"}',  # over max_record_bytes=8000: skipped unread
        b"",
        b"   ",
    ]
    rows: list = []
    for i, r in enumerate(udhr[:250]):
        rows.append({"id": r["id"] + ":" + r["lang"], "text": r["text"], "lang": r["lang"], "n": i})
        if i % 17 == 0:
            rows.append(bad[(i // 17) % len(bad)])
        if i % 23 == 5:  # the same text again, under another id: duplicate
            rows.append({"id": f"again{i}", "text": "  " + r["text"].replace(" ", "  ")})
        if i % 29 == 7:  # the same id with other text: duplicate_id
            rows.append({"id": r["id"] + ":" + r["lang"], "text": f"other text {i}"})
        if i % 31 == 3:  # no id: a content id
            rows.append({"text": f"anonymous {i % 4}"})
    (d / "a.jsonl").write_bytes(b"\xef\xbb\xbf" + _jl(*rows).replace(b"\n", b"\r\n", 40))
    big = _jl(*({"id": f"g{i}", "text": f"gz {i} " + hashlib.sha1(str(i).encode()).hexdigest()[:20]}
                for i in range(3000)))  # fmt: skip
    gz = gzip.compress(big)
    (d / "b.jsonl.gz").write_bytes(gz[: len(gz) // 2])
    (d / "c.parquet").write_bytes(b"this is not parquet")
    (d / "d.jsonl.zst").write_bytes(_jl({"text": "plain JSON lines, not zstd"}))
    (d / "e.jsonl").write_bytes(b"")
    csv_rows = ['id,text,lang', 'c1,"a quoted field\nover two lines",eng_Latn', f'c2,"{udhr[3]["text"]}",x',
                'c3,"anonymous 1",', 'c4,"say ""hi""",']  # fmt: skip
    (d / "f.csv").write_text("\n".join(csv_rows) + "\n", encoding="utf-8")
    pt = pa.table({"id": [f"p{i}" for i in range(300)],
                   "text": [udhr[250 + i % 150]["text"] if i % 7 else "anonymous 2" for i in range(300)],
                   "score": [float(i) for i in range(300)]})  # fmt: skip
    pq.write_table(pt, d / "g.parquet", row_group_size=40)
    (d / "h.txt").write_text(udhr[10]["text"], encoding="utf-8")


SETTINGS = {"max_text_chars": 2000, "max_record_bytes": 8000}


def snapshot(res, d: Path) -> dict:
    """An IngestResult as plain data, paths relative to the corpus dir."""
    root = str(d) + "/"
    docs = sorted(
        (
            r["doc_id"],
            r["source"].replace(root, ""),
            r["source_row"],
            hashlib.sha1(r["text"].encode()).hexdigest(),
        )
        for r in res.table.to_pylist()
    )
    rejects = sorted(
        (r["source"].replace(root, ""), r["source_row"] if r["source_row"] is not None else -1, r["reason"],
         r["detail"].replace(root, ""), r["raw"])
        for r in res.rejects
    )  # fmt: skip
    return {
        "input_rows": res.input_rows,
        "documents": [list(x) for x in docs],
        "rejects": [list(x) for x in rejects],
    }
