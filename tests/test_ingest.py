"""Ingest: formats, reject reasons, ids, dedup, accounting, s3://. Inputs are generated per test."""

from __future__ import annotations

import gzip
import hashlib
import json
import time
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from tests.staged_ingest import ingest
from xlmflow import schemas
from xlmflow.errors import ConfigError, FatalError
from xlmflow.ray_cluster.registry import make_settings
from xlmflow.tasks.inputs import expand_inputs

# the split tasks and reducers run on Ray, as in a run
pytestmark = pytest.mark.usefixtures("ray_local")


def run(inputs, tmp_path: Path, **kw):
    paths = [str(p) for p in (inputs if isinstance(inputs, list) else [inputs])]
    # beside tmp_path, not in it: tests read tmp_path itself as the input directory
    return ingest(make_settings(inputs=paths, out=str(tmp_path.with_name(tmp_path.name + "-out")), **kw))


def jl(*rows) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def by_reason(res) -> dict:
    out: dict = {}
    for r in res.rejects:
        out.setdefault(r["reason"], []).append(r)
    return out


def assert_accounting(res) -> None:
    assert res.input_rows == res.table.num_rows + len(res.rejects)
    c = res.counts()
    assert c["input_rows"] == c["accepted"] + c["rejects"] == res.input_rows
    assert sum(c["rejects_by_reason"].values()) == c["rejects"]


def content_id(text: str) -> str:
    norm = " ".join(unicodedata.normalize("NFC", text).split())
    return "sha1:" + hashlib.sha1(norm.encode()).hexdigest()[:16]


def test_jsonl_fields_ids_meta_and_rows(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_bytes(
        jl({"id": "x1", "lang": "deu_Latn", "text": "Hallo Welt", "url": "http://e", "n": 3})
        + b"\n   \n"  # blank lines are skipped and are not rows, but they are lines
        + jl({"id": 7, "text": "Zahl-ID"}, {"text": "ohne ID", "lang": None}, {"id": "", "text": "leere ID"})
    )
    res = run(f, tmp_path)
    assert res.table.schema == schemas.STAGED_DOCS
    assert res.input_files == [str(f)]
    rows = res.table.to_pylist()
    assert [r["doc_id"] for r in rows] == ["x1", "7", content_id("ohne ID"), content_id("leere ID")]
    assert [r["source_row"] for r in rows] == [1, 4, 5, 6]
    assert {r["source"] for r in rows} == {str(f)}
    assert rows[0]["lang_hint"] == "deu_Latn" and rows[2]["lang_hint"] is None
    assert json.loads(rows[0]["meta"]) == {"url": "http://e", "n": 3}
    assert rows[1]["meta"] == "{}"
    assert [r["n_chars"] for r in rows] == [len(r["text"]) for r in rows]
    assert res.counts() == {"input_rows": 4, "accepted": 4, "rejects": 0, "rejects_by_reason": {}}


def test_every_bad_row_kind_is_a_reject_and_accounting_holds(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.jsonl").write_bytes(
        jl(
            {"id": "ok1", "text": "good one"},
            b'{"text": "broken',  # invalid_json
            b"[1, 2]",  # not_object
            b'"just a string"',  # not_object
            {"id": "m1"},  # missing_text
            {"text": None},  # missing_text (null)
            {"text": 42},  # non_string_text
            {"text": ""},  # empty_text
            {"text": " \t\u3000"},  # empty_text (whitespace only)
            b'{"text": "caf\xe9 latin-1"}',  # invalid_utf8
            b'{"text": "lone \\ud800 surrogate"}',  # unencodable_text
            b'{"id": "\\udc00", "text": "surrogate in id"}',  # unencodable_text
            {"text": "x" * 51},  # too_long (max_text_chars=50)
            {"id": "ok1", "text": "other text, same id"},  # duplicate_id
            {"id": "ok2", "text": "  good   one "},  # duplicate (same normalized text)
            b'{"text": "kept; meta has a surrogate", "note": "\\udc00"}',  # accepted
        )
    )
    # a gzip file cut mid-stream: rows before the break are kept, one reject for the tail
    big = jl(
        *(
            {"id": f"g{i}", "text": f"gz {i} " + hashlib.sha1(str(i).encode()).hexdigest()[:20]}
            for i in range(3000)
        )
    )
    gz = gzip.compress(big)
    (d / "b.jsonl.gz").write_bytes(gz[: len(gz) // 2])
    (d / "c.parquet").write_bytes(b"this is not parquet")  # unreadable_file
    (d / "d.jsonl.zst").write_bytes(jl({"text": "plain JSON lines, not zstd"}))  # unreadable_file
    (d / "e.jsonl").write_bytes(b"")  # an empty file is no rows, not an error
    res = run(d, tmp_path, max_text_chars=50)

    assert_accounting(res)
    got = by_reason(res)
    want = {"invalid_json": 1, "not_object": 2, "missing_text": 2, "non_string_text": 1, "empty_text": 2,
            "invalid_utf8": 1, "unencodable_text": 2, "too_long": 1, "duplicate_id": 1, "duplicate": 1,
            "truncated_input": 1, "unreadable_file": 2}  # fmt: skip
    assert {k: len(v) for k, v in got.items()} == want
    a = str(d / "a.jsonl")
    assert [r["source_row"] for r in got["not_object"]] == [3, 4]
    assert got["invalid_utf8"][0]["source"] == a and got["invalid_utf8"][0]["source_row"] == 10
    assert "ok1" in got["duplicate_id"][0]["detail"] and "row 1" in got["duplicate_id"][0]["detail"]
    assert [(r["source"], r["source_row"]) for r in got["unreadable_file"]] == [
        (str(d / "c.parquet"), None),
        (str(d / "d.jsonl.zst"), None),
    ]
    # lines around the bad ones survive; gz rows before the break are a clean prefix
    ids = res.table.column("doc_id").to_pylist()
    a_rows = [r for r in res.table.to_pylist() if r["source"] == a]
    assert [r["source_row"] for r in a_rows] == [1, 16]
    gz_ids = [i for i in ids if i.startswith("g")]
    assert 0 < len(gz_ids) < 3000 and gz_ids == [f"g{i}" for i in range(len(gz_ids))]
    tail = got["truncated_input"][0]
    assert tail["source_row"] == len(gz_ids) + 1 and tail["source"].endswith("b.jsonl.gz")
    # both tables are writable as Parquet (no surrogates leak into Arrow strings)
    pq.write_table(res.table, tmp_path / "t.parquet")
    pq.write_table(schemas.rejects_table(res.rejects), tmp_path / "r.parquet")
    assert pq.read_table(tmp_path / "r.parquet").num_rows == len(res.rejects)


def test_integers_past_64_bits_keep_every_digit(tmp_path):
    # orjson reads them as floats: these two ids would round to one and the second be a duplicate_id
    big = 123456789012345678901234567890
    f = tmp_path / "a.jsonl"
    f.write_text(
        f'{{"id": {big}, "text": "first", "n": -9223372036854775809}}\n{{"id": {big + 1}, "text": "second"}}\n'
    )
    res = run(f, tmp_path)
    rows = res.table.to_pylist()
    assert [r["doc_id"] for r in rows] == [str(big), str(big + 1)] and res.rejects == []
    assert json.loads(rows[0]["meta"]) == {"n": -9223372036854775809}


def test_dedup_is_global_first_row_wins_and_ids_are_stable(tmp_path):
    (tmp_path / "1.jsonl").write_bytes(jl({"text": "Cafe\u0301  au lait"}, {"text": "second"}))
    (tmp_path / "2.jsonl").write_bytes(jl({"text": " Caf\u00e9 au\nlait"}, {"id": "z", "text": "second"}))
    res = run(str(tmp_path / "*.jsonl"), tmp_path)
    assert_accounting(res)
    assert res.table.column("text").to_pylist() == ["Cafe\u0301  au lait", "second"]  # text kept as given
    assert res.table.column("doc_id").to_pylist() == [content_id("Café au lait"), content_id("second")]
    assert [(r["source"][-7:], r["source_row"], r["reason"]) for r in res.rejects] == [
        ("2.jsonl", 1, "duplicate"),
        ("2.jsonl", 2, "duplicate"),
    ]
    again = run(str(tmp_path / "*.jsonl"), tmp_path)
    assert again.table.equals(res.table) and again.rejects == res.rejects


def test_bom_crlf_and_blank_lines_are_accepted(tmp_path):
    f = tmp_path / "win.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + b'{"text": "eins"}\r\n\r\n{"text": "zwei"}\r\n{"text": "drei"}')
    c = tmp_path / "win.csv"
    c.write_bytes(
        '\ufeffid,text,lang\r\n1,"zeile eins\r\nzeile zwei",deu_Latn\r\n\r\n2,"sagt ""hi""",\r\n'.encode()
    )
    res = run([f, c], tmp_path)
    assert_accounting(res)
    assert not res.rejects
    rows = res.table.to_pylist()
    assert [(r["text"], r["source_row"]) for r in rows[:2]] == [
        ("zeile eins\r\nzeile zwei", 1),
        ('sagt "hi"', 2),
    ]
    assert [r["doc_id"] for r in rows[:2]] == ["1", "2"]
    assert [r["lang_hint"] for r in rows[:2]] == ["deu_Latn", None]  # empty CSV cell = absent
    assert [(r["text"], r["source_row"]) for r in rows[2:]] == [("eins", 1), ("zwei", 3), ("drei", 4)]


def test_csv_tsv_and_gzipped_csv(tmp_path):
    (tmp_path / "a.csv").write_text("text,id,source_url\nhello,a1,u1\n,a2,u2\nbye,a3,u3,EXTRA\n")
    (tmp_path / "b.tsv").write_text("text\tlang\ntab text, with comma\tfra_Latn\n")
    (tmp_path / "c.csv.gz").write_bytes(gzip.compress(b"id,body\n9,no text column\n"))
    res = run(tmp_path, tmp_path)
    assert_accounting(res)
    rows = res.table.to_pylist()
    assert [(r["doc_id"], r["text"], r["source_row"]) for r in rows] == [
        ("a1", "hello", 1),
        ("a3", "bye", 3),
        (content_id("tab text, with comma"), "tab text, with comma", 1),
    ]
    assert json.loads(rows[0]["meta"]) == {"source_url": "u1"}
    assert json.loads(rows[1]["meta"]) == {"source_url": "u3", "_extra": ["EXTRA"]}
    assert rows[2]["lang_hint"] == "fra_Latn"
    assert [(r["reason"], r["source_row"]) for r in res.rejects] == [("empty_text", 2), ("missing_text", 1)]


def test_csv_invalid_utf8_row_is_rejected_alone(tmp_path):
    f = tmp_path / "a.csv"
    f.write_bytes(b"text\ngood\nbad \xff\xfe byte\nalso good\n")
    res = run(f, tmp_path)
    assert res.table.column("text").to_pylist() == ["good", "also good"]
    assert [(r["reason"], r["source_row"]) for r in res.rejects] == [("invalid_utf8", 2)]


def test_parquet_rows_types_and_meta(tmp_path):
    import datetime as dt

    t = pa.table(
        {
            "id": pa.array([10, 11, 12], pa.int64()),
            "text": ["eins", None, "drei"],
            "lang": ["deu_Latn", "deu_Latn", None],
            "ts": [dt.datetime(2024, 1, 2, 3, 4, 5)] * 3,
            "score": [0.5, 1.5, 2.5],
        }
    )
    pq.write_table(t, tmp_path / "a.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "b.parquet")
    res = run(tmp_path, tmp_path)
    assert_accounting(res)
    rows = res.table.to_pylist()
    assert [(r["doc_id"], r["source_row"], r["lang_hint"]) for r in rows] == [
        ("10", 0, "deu_Latn"),
        ("12", 2, None),
    ]
    meta = json.loads(rows[0]["meta"])
    assert meta["score"] == 0.5 and meta["ts"].startswith("2024-01-02")
    assert [(r["reason"], r["source_row"]) for r in res.rejects] == [
        ("missing_text", 1),
        ("non_string_text", 0),
        ("non_string_text", 1),
    ]
    # a reject's raw excerpt says what the row was
    assert '"id": 11' in res.rejects[0]["raw"] or '"id":11' in res.rejects[0]["raw"]


def test_repeated_column_names_keep_every_value(tmp_path):
    # spreadsheet exports repeat headers; a record is a dict, so a repeat would keep one value silently
    (tmp_path / "a.csv").write_text("id,text,text,note,note,note.1\nc1,first,second,x,y,z\n")
    t = pa.Table.from_arrays(
        [pa.array(["p1"]), pa.array(["parquet first"]), pa.array(["parquet second"])],
        names=["id", "text", "text"],
    )
    pq.write_table(t, tmp_path / "b.parquet")
    res = run(tmp_path, tmp_path)
    assert_accounting(res)
    rows = {r["doc_id"]: r for r in res.table.to_pylist()}
    # the first keeps its name and its role; the others reach meta under pandas' names, none clobbered
    assert rows["c1"]["text"] == "first"
    assert json.loads(rows["c1"]["meta"]) == {"text.1": "second", "note": "x", "note.2": "y", "note.1": "z"}
    assert rows["p1"]["text"] == "parquet first"
    assert json.loads(rows["p1"]["meta"]) == {"text.1": "parquet second"}


def test_parquet_binary_meta_is_base64(tmp_path):
    import base64

    blobs = [b"\x00\xff\xfe", b"", None]
    t = pa.table({"text": ["one", "two", "three"], "blob": pa.array(blobs, pa.binary())})
    pq.write_table(t, tmp_path / "a.parquet")
    res = run(tmp_path, tmp_path)
    got = [json.loads(r["meta"])["blob"] for r in res.table.to_pylist()]
    assert [None if g is None else base64.b64decode(g) for g in got] == blobs


def test_directory_of_txt_files_one_document_each(tmp_path):
    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    (d / "b.txt").write_text("Zweites Dokument.\nMit zwei Zeilen.\n")
    (d / "sub" / "a.txt").write_bytes("\ufeffErstes Dokument.".encode())
    (d / "c.txt").write_bytes(b"kaputt \xff")
    (d / ".hidden.txt").write_text("not data")
    (d / "_SUCCESS").write_text("")
    (d / "notes.md").write_text("not an input format")
    res = run(d, tmp_path)
    assert_accounting(res)
    assert res.input_files == [str(d / "b.txt"), str(d / "c.txt"), str(d / "sub" / "a.txt")]
    rows = res.table.to_pylist()
    assert [(r["text"], r["source_row"]) for r in rows] == [
        ("Zweites Dokument.\nMit zwei Zeilen.\n", 0),
        ("Erstes Dokument.", 0),
    ]
    assert [(r["reason"], r["source"]) for r in res.rejects] == [("invalid_utf8", str(d / "c.txt"))]


def test_compressed_and_alias_jsonl_formats(tmp_path):
    rows = [
        {"id": f"r{i}", "text": f"row {i} {hashlib.sha1(str(i).encode()).hexdigest()}"} for i in range(6000)
    ]
    z = zstandard.ZstdCompressor()
    (tmp_path / "a.jsonl.zst").write_bytes(
        z.compress(jl(*rows[:10])) + z.compress(jl(*rows[10:20]))
    )  # 2 frames
    (tmp_path / "b.ndjson").write_bytes(jl(*rows[20:25]))
    (tmp_path / "c.json").write_bytes(jl(*rows[25:30]))
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress(jl(*rows[30:35])) + gzip.compress(jl(*rows[35:40])))
    res = run(tmp_path, tmp_path)
    assert not res.rejects
    assert res.table.column("doc_id").to_pylist() == [r["id"] for r in rows[:40]]

    cut = z.compress(jl(*rows))
    trunc = tmp_path / "t" / "cut.jsonl.zst"
    trunc.parent.mkdir()
    trunc.write_bytes(cut[: int(len(cut) * 0.8)])
    res = run(trunc, tmp_path)
    assert_accounting(res)
    kept = res.table.column("doc_id").to_pylist()
    assert 0 < len(kept) < 6000 and kept == [r["id"] for r in rows[: len(kept)]]
    assert [(r["reason"], r["source_row"]) for r in res.rejects] == [("truncated_input", len(kept) + 1)]

    # cut right after the last newline (gzip trailer missing): every line is kept, the break is still reported
    (trunc.parent / "notrailer.jsonl.gz").write_bytes(gzip.compress(jl(*rows[:5]))[:-8])
    res = run(trunc.parent / "notrailer.jsonl.gz", tmp_path)
    assert res.table.column("doc_id").to_pylist() == [r["id"] for r in rows[:5]]
    assert [(r["reason"], r["source_row"], r["raw"]) for r in res.rejects] == [("truncated_input", 6, "")]


def test_expand_inputs_errors_and_globs(tmp_path):
    with pytest.raises(FatalError, match="matched no files; check the path/glob"):
        expand_inputs([str(tmp_path / "nope.jsonl")])
    with pytest.raises(FatalError, match="matched no files"):
        expand_inputs([str(tmp_path / "*.jsonl")])
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "readme.md").write_text("x")
    with pytest.raises(FatalError, match="matched no files"):
        expand_inputs([str(tmp_path / "e")])
    with pytest.raises(FatalError, match="not a supported file type"):
        expand_inputs([str(tmp_path / "e" / "readme.md")])
    (tmp_path / "d" / "x").mkdir(parents=True)
    for name in ("d/2.jsonl", "d/10.csv", "d/x/1.parquet", "top.jsonl"):
        (tmp_path / name).write_text("")
    got = expand_inputs([str(tmp_path / "top.jsonl"), str(tmp_path / "d"), str(tmp_path / "*.jsonl")])
    assert got == sorted(str(tmp_path / n) for n in ("d/2.jsonl", "d/10.csv", "d/x/1.parquet", "top.jsonl"))
    # a FatalError from ingest too, before anything is read
    with pytest.raises(FatalError, match="nope"):
        run(tmp_path / "nope", tmp_path)


def test_hidden_and_underscore_folders_below_an_input_are_not_data(tmp_path):
    from xlmflow.tasks.inputs import check_output_apart

    d = tmp_path / "in"
    for name in (
        "ok.jsonl",
        "sub/ok.jsonl",
        "t/_delta_log/00000.json",
        ".git/x.jsonl",
        "sub/_tmp/x.jsonl",
        "_x.csv",
    ):
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text('{"text": "x"}\n')
    files = expand_inputs([str(d)])
    assert files == [str(d / "ok.jsonl"), str(d / "sub/ok.jsonl")]
    # a folder the user names is read even if its own name is hidden
    assert expand_inputs([str(d / ".git")]) == [str(d / ".git/x.jsonl")]
    # an output root inside an input would feed later runs their own outputs; beside or above is fine
    for inputs, out in [
        ([str(d)], d / "out"),
        ([str(d)], d),
        ([f"{d}/**/*.jsonl"], d / "sub" / "out"),
        (["s3://b/in/"], "s3://b/in/out"),
    ]:
        with pytest.raises(ConfigError, match="is inside the input"):
            check_output_apart(inputs, str(out))
    for inputs, out in [
        ([str(d)], tmp_path / "out"),
        ([str(d)], tmp_path),
        ([f"{d}/*.jsonl"], d),
        (["s3://b/in/"], "s3://b/in2"),
        (["s3://b/in/a.jsonl"], "s3://b/in"),
        (["**/*.jsonl"], tmp_path / "elsewhere"),  # relative to the working directory
    ]:
        check_output_apart(inputs, str(out))
    # the ingest itself refuses too (scheduled runs do not pass through the CLI's checks)
    with pytest.raises(ConfigError, match="would read its outputs as documents"):
        ingest(make_settings(inputs=[str(d)], out=str(d / "out")))


@pytest.mark.timeout(60)  # a FIFO that got opened would block here forever
def test_fifos_devices_and_broken_symlinks_in_a_directory_are_skipped(tmp_path):
    import os

    d = tmp_path / "in"
    d.mkdir()
    (d / "a.jsonl").write_bytes(jl({"id": "a", "text": "the one real document"}))
    os.mkfifo(d / "pipe.jsonl")
    (d / "zero.txt").symlink_to("/dev/zero")
    (d / "loop1.jsonl").symlink_to(d / "loop2.jsonl")
    (d / "loop2.jsonl").symlink_to(d / "loop1.jsonl")
    (d / "gone.csv").symlink_to(d / "missing.csv")
    assert expand_inputs([str(d)]) == [str(d / "a.jsonl")]
    res = run(d, tmp_path)
    assert_accounting(res)
    assert res.table.column("doc_id").to_pylist() == ["a"] and res.rejects == []
    with pytest.raises(FatalError, match="FIFO, not a regular file"):
        expand_inputs([str(d / "pipe.jsonl")])


def test_pairs_mode_reasons_ids_and_hints(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_bytes(
        jl(
            {
                "id": "p1",
                "src": "Hello",
                "mt": "Hallo",
                "src_lang": "eng_Latn",
                "mt_lang": "deu_Latn",
                "k": 1,
            },
            {"src": "Good day", "mt": "Guten Tag"},
            {"mt": "x"},  # missing_src
            {"src": "x"},  # missing_mt
            {"src": 1, "mt": "x"},  # non_string_src
            {"src": "x", "mt": ["y"]},  # non_string_mt
            {"src": " ", "mt": "x"},  # empty_src
            {"src": "x", "mt": ""},  # empty_mt
            {"src": "x" * 30, "mt": "y"},  # too_long (max_text_chars=20)
            {"src": "Good  day", "mt": "Guten Tag "},  # duplicate (same normalized src+mt)
            {"id": "p1", "src": "Hello", "mt": "Servus"},  # duplicate_id
            b"{nope",  # invalid_json
            {"text": "a doc, not a pair"},  # missing_src
        )
    )
    res = run(f, tmp_path, tasks="qe", max_text_chars=20)
    assert res.table.schema == schemas.STAGED_PAIRS
    assert_accounting(res)
    rows = res.table.to_pylist()
    assert rows[0] == {"pair_id": "p1", "src": "Hello", "mt": "Hallo", "src_lang_hint": "eng_Latn",
                       "mt_lang_hint": "deu_Latn", "source": str(f), "source_row": 1, "meta": '{"k":1}'}  # fmt: skip
    assert rows[1]["pair_id"] == "sha1:" + hashlib.sha1(b"Good day\tGuten Tag").hexdigest()[:16]
    assert [r["reason"] for r in res.rejects] == [
        "missing_src", "missing_mt", "non_string_src", "non_string_mt", "empty_src", "empty_mt",
        "too_long", "duplicate", "duplicate_id", "invalid_json", "missing_src",
    ]  # fmt: skip


def test_parquet_rows_are_measured_as_decoded(tmp_path):
    """Dictionary encoding: 300 rows of one 5,000-byte value are ~5 KB in the metadata, 1.5 MB decoded.
    Each decoded row meets max_record_bytes, and decoded bytes count against max_file_bytes."""
    big = "Wert" * 1250
    text = pa.DictionaryArray.from_arrays(pa.array([0, 1] * 150, pa.int32()), pa.array(["kurz", big]))
    t = pa.table({"id": [f"r{i}" for i in range(300)], "text": text})
    pq.write_table(t, tmp_path / "a.parquet", compression="zstd", store_schema=False)
    assert pq.ParquetFile(tmp_path / "a.parquet").metadata.row_group(0).total_byte_size < 20_000
    res = run(tmp_path / "a.parquet", tmp_path, max_record_bytes=4000)
    assert_accounting(res)
    assert res.table.column("doc_id").to_pylist() == ["r0"]  # the other "kurz" rows are duplicates
    too_long = by_reason(res)["too_long"]
    assert [r["source_row"] for r in too_long] == list(range(1, 300, 2))
    assert "5002 bytes decoded, over max_record_bytes=4000" in too_long[0]["detail"]
    assert too_long[0]["raw"].startswith('{"id": "r1", "text": "WertWert')
    # ~5 KB every other row: the 100th long one (row 199) takes the file past 500 KB decoded; it and the
    # rows after it are one reject
    res = run(tmp_path / "a.parquet", tmp_path, max_file_bytes=500_000)
    assert_accounting(res)
    (r,) = by_reason(res)["file_too_large"]
    assert r["source_row"] == 199 and "max_file_bytes=500000" in r["detail"]
    assert res.input_rows == 200


def test_a_huge_repeated_parquet_value_is_measured_while_still_encoded(tmp_path):
    """200 rows of one 40 MB dictionary value: a few KB on disk, 40 MB in the metadata, 8 GB decoded.
    Rows must be measured while the value is held once (the dictionary), not once per row of a batch."""
    import subprocess
    import sys

    text = pa.DictionaryArray.from_arrays(pa.array([0] * 200, pa.int32()), pa.array(["x" * (40 << 20)]))
    pq.write_table(pa.table({"text": text}), tmp_path / "a.parquet", compression="zstd", store_schema=False)
    script = (
        "import json, resource, sys; import pyarrow as pa; from pathlib import Path; "
        "from xlmflow.tasks.ingest import read_split; from xlmflow.tasks.splits import list_inputs, plan_splits; "
        "from xlmflow.ray_cluster.registry import make_settings; "
        "s = make_settings(inputs=[sys.argv[1]], out=sys.argv[2], max_record_bytes=1_000_000); "
        "plan = plan_splits(list_inputs(s.inputs), s.split_bytes, s.max_file_bytes, s.dedup_buckets); "
        "(split,) = plan.splits; res = read_split(split.to_dict(), plan.buckets, s.model_dump_json(), sys.argv[2]); "
        "print(json.dumps([res['input_rows'], sorted(res['rejects_by_reason']), res['rejects'], "
        "pa.default_memory_pool().max_memory() >> 20, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10]))"
    )
    root = str(Path(__file__).parent.parent)
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "a.parquet"), str(tmp_path / "w")],
        cwd=root, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows, reasons, n_rejects, arrow_mib, rss_mib = json.loads(proc.stdout.splitlines()[-1])
    assert (rows, reasons, n_rejects) == (200, ["too_long"], 200)
    # Arrow's own peak is the measure (expanded, one batch alone is 64 x 40 MB: 2.5 GiB; held once,
    # ~200 MiB); the process's peak RSS varies with the allocator's timing, so its bound is loose
    assert arrow_mib < 600, f"Arrow peak {arrow_mib} MiB: rows were expanded before they were measured"
    assert rss_mib < 3500, f"peak RSS {rss_mib} MiB"


def test_a_text_of_max_text_chars_passes_however_it_is_escaped(tmp_path):
    """The default byte limit leaves room for any JSON escaping of max_text_chars characters (an escaped
    BMP character is 6 bytes, an escaped astral one, a surrogate pair, 12): the text's length decides."""
    n = 999
    docs = tmp_path / "docs.jsonl"  # json.dumps escapes everything past ASCII
    docs.write_text(
        "".join(json.dumps({"id": f"{c}{k}", "text": c * k}) + "\n" for c in "中😀" for k in (n, n + 1))
    )
    assert len(docs.read_text().splitlines()[2]) > 12 * n
    res = run(docs, tmp_path, max_text_chars=n)
    assert_accounting(res)
    assert res.table.column("doc_id").to_pylist() == [f"中{n}", f"😀{n}"]
    assert res.table.column("n_chars").to_pylist() == [n, n]
    assert [(r["source_row"], r["reason"]) for r in res.rejects] == [(2, "too_long"), (4, "too_long")]
    assert all(f"text has {n + 1} chars, over max_text_chars={n}" in r["detail"] for r in res.rejects)
    # pairs: two texts on one line
    pairs = tmp_path / "pairs" / "p.jsonl"
    pairs.parent.mkdir()
    pairs.write_text("".join(json.dumps({"src": "😀" * k, "mt": "中" * k}) + "\n" for k in (n, n + 1)))
    res = run(pairs, tmp_path, tasks="qe", max_text_chars=n)
    assert_accounting(res)
    assert res.table.num_rows == 1 and [r["reason"] for r in res.rejects] == ["too_long"]


def test_s3_jsonl_and_parquet_inputs(s3_bucket, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.pipe_file(f"{s3_bucket}/in/a.jsonl", jl({"id": "s1", "text": "aus S3"}, b"{bad"))
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table({"text": ["parquet in S3"], "lang": ["deu_Latn"]}), buf)
    fs.pipe_file(f"{s3_bucket}/in/sub/b.parquet", buf.getvalue().to_pybytes())
    fs.pipe_file(f"{s3_bucket}/in/_SUCCESS", b"")

    res = run(f"{s3_bucket}/in", tmp_path)
    assert res.input_files == [f"{s3_bucket}/in/a.jsonl", f"{s3_bucket}/in/sub/b.parquet"]
    assert_accounting(res)
    rows = res.table.to_pylist()
    assert [(r["doc_id"], r["source"], r["source_row"]) for r in rows] == [
        ("s1", f"{s3_bucket}/in/a.jsonl", 1),
        (content_id("parquet in S3"), f"{s3_bucket}/in/sub/b.parquet", 0),
    ]
    assert [(r["reason"], r["source_row"]) for r in res.rejects] == [("invalid_json", 2)]
    assert expand_inputs([f"{s3_bucket}/in/*.jsonl"]) == [f"{s3_bucket}/in/a.jsonl"]
    with pytest.raises(FatalError, match="matched no files"):
        expand_inputs([f"{s3_bucket}/missing/x.jsonl"])


def test_100k_row_jsonl_ingests_in_seconds(tmp_path):
    f = tmp_path / "big.jsonl"
    f.write_bytes(
        "".join(
            json.dumps(
                {"id": f"d{i}", "lang": "eng_Latn", "text": f"Document number {i} says hello to the world."}
            )
            + "\n"
            for i in range(100_000)
        ).encode()
    )
    t0 = time.perf_counter()
    res = run(f, tmp_path)
    took = time.perf_counter() - t0
    assert res.table.num_rows == 100_000 and not res.rejects
    assert took < 20, f"ingest of 100k rows took {took:.1f}s"  # ~1-3 s here; generous for a shared box


def test_over_long_jsonl_line_is_one_reject_and_the_file_goes_on(tmp_path):
    long = b'{"text": "' + b"x" * (3 << 20) + b'"}'  # spans several 1 MiB read chunks
    f = tmp_path / "a.jsonl"
    f.write_bytes(jl({"text": "eins"}, b"", long, {"text": "zwei"}, long[:5000], {"text": "drei"}) + long)
    res = run(f, tmp_path, max_record_bytes=4096)
    assert_accounting(res)
    assert [(r["text"], r["source_row"]) for r in res.table.to_pylist()] == [
        ("eins", 1),
        ("zwei", 4),
        ("drei", 6),
    ]
    assert [(r["reason"], r["source_row"]) for r in res.rejects] == [
        ("too_long", 3),
        ("too_long", 5),
        ("too_long", 7),  # the last line, without a newline
    ]
    first = res.rejects[0]
    assert f"{len(long) + 1} bytes" in first["detail"]  # counted as it was skipped
    assert "max_record_bytes=4096" in first["detail"] and "--max-record-bytes" in first["detail"]
    assert first["raw"].startswith('{"text": "xxx') and len(first["raw"]) <= schemas.REJECT_RAW_CHARS + 1


def test_over_long_csv_record_is_skipped_to_its_real_end(tmp_path):
    # a quoted field over the limit that holds newlines, "" and ," must not leak rows when skipped
    field = '"' + 'a "quoted" line,\n,"b\n'.replace('"', '""') * 400 + '"'
    f = tmp_path / "a.csv"
    f.write_text(f'id,text\n1,eins\n2,{field}\n3,"zwei\nzeilen"\n4,{"y" * 9000}\n5,"drei"\n', newline="")
    t = tmp_path / "b.tsv"
    t.write_text(f"id\ttext\n6\tvier\n7\t{field}\n8\tfünf\n", newline="")
    res = run([f, t], tmp_path, max_record_bytes=4096)
    assert_accounting(res)
    assert [(r["doc_id"], r["text"], r["source_row"]) for r in res.table.to_pylist()] == [
        ("1", "eins", 1),
        ("3", "zwei\nzeilen", 3),
        ("5", "drei", 5),
        ("6", "vier", 1),
        ("8", "fünf", 3),
    ]
    assert [(r["source"][-5:], r["reason"], r["source_row"]) for r in res.rejects] == [
        ("a.csv", "too_long", 2),
        ("a.csv", "too_long", 4),
        ("b.tsv", "too_long", 2),
    ]
    assert (
        res.rejects[0]["raw"].startswith('2,"a ""quoted"" line,') and "record has" in res.rejects[0]["detail"]
    )


def test_csv_records_skipped_as_too_long_resync_where_csv_would(tmp_path, monkeypatch):
    """Random CSV (quotes, "" escapes, stray quotes, \\r, \\n, \\r\\n) read with tiny read chunks: every
    record is what csv.reader parses from the whole file, or too_long when its bytes are over the limit."""
    import csv
    import io
    import random

    from xlmflow.tasks import readers
    from xlmflow.tasks.readers import stream

    def oracle(data: str, limit: int) -> list:
        lines: list[bytes] = []

        def feed():
            for line in io.StringIO(data, newline=""):
                lines.append(line.encode())
                yield line

        reader = csv.reader(feed())
        next(reader)
        lines.clear()
        out = []
        for row in reader:
            last = lines[-1]  # a record's bytes do not count the line break that ends it
            eol = 2 if last.endswith(b"\r\n") else 1 if last.endswith((b"\r", b"\n")) else 0
            size = sum(map(len, lines)) - eol
            lines.clear()
            if row:
                out.append("too_long" if size > limit else row)
        return out

    cells = ['5" x', 'a""b', 'q"', "", '"x"y', "z\r", "plain"]
    for seed in range(150):
        rng = random.Random(seed)
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        for _ in range(rng.randint(1, 10)):
            if rng.random() < 0.2:  # written by hand: quotes inside unquoted fields stay literal
                out.write(",".join(rng.choice(cells) for _ in range(3)) + rng.choice(["\n", "\r\n", "\r"]))
            else:
                w.writerow(["".join(rng.choice('ab,"\n \r') for _ in range(rng.choice([3, 30, 200])))] * 2)
        data, limit = "text,b,c\n" + out.getvalue(), rng.choice([20, 60, 500])
        (tmp_path / "t.csv").write_text(data, newline="")
        monkeypatch.setattr(stream, "CHUNK", rng.choice([1, 2, 3, 7, 64]))  # boundaries everywhere
        got = [
            v.reason if isinstance(v, readers.Bad) else [v[k] for k in ("text", "b", "c") if k in v]
            for _, v, _ in readers.read_records(str(tmp_path / "t.csv"), max_record_bytes=limit)
        ]
        assert got == oracle(data, limit), (seed, data)


def test_file_past_max_file_bytes_keeps_its_first_rows_and_one_reject(tmp_path):
    body = jl(*({"text": f"row {i:03d}"} for i in range(100)))  # 20 bytes a line
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(body))
    (tmp_path / "b.csv").write_bytes(b"text\n" + b"".join(b"csv %03d\n" % i for i in range(100)))
    (tmp_path / "c.txt").write_bytes(b"t" * 500)
    (tmp_path / "d.jsonl").write_bytes(body[:200].replace(b"row", b"ddd"))  # exactly the limit: all read
    res = run(tmp_path, tmp_path, max_file_bytes=200)
    assert_accounting(res)
    rows = [(Path(r["source"]).name, r["source_row"]) for r in res.table.to_pylist()]
    assert rows[:10] == [("a.jsonl.gz", i) for i in range(1, 11)]  # the 10 lines within 200 bytes
    assert rows[10:34] == [("b.csv", i) for i in range(1, 25)]  # 5 + 24 x 8 bytes; the 25th is cut
    assert rows[34:] == [("d.jsonl", i) for i in range(1, 11)]
    assert [(Path(r["source"]).name, r["source_row"], r["reason"]) for r in res.rejects] == [
        ("a.jsonl.gz", 11, "file_too_large"),
        ("b.csv", 25, "file_too_large"),
        ("c.txt", 0, "file_too_large"),
    ]
    detail = res.rejects[0]["detail"]
    assert "max_file_bytes=200" in detail and "--max-file-bytes" in detail


def test_txt_over_the_record_limit_is_one_reject_read_in_bounded_memory(tmp_path):
    (tmp_path / "big.txt").write_bytes(b"Wort " * 600_000)  # 3 MB, several read chunks
    (tmp_path / "small.txt").write_text("kurz")
    res = run(tmp_path, tmp_path, max_record_bytes=1 << 20)
    assert_accounting(res)
    assert res.table.column("text").to_pylist() == ["kurz"]
    (r,) = res.rejects
    assert (r["source"][-7:], r["source_row"], r["reason"]) == ("big.txt", 0, "too_long")
    assert "--max-record-bytes" in r["detail"] and r["raw"].startswith("Wort Wort")


def test_parquet_row_groups_over_the_bound_are_rejected_unread(tmp_path):
    texts = [f"klein {i}" if i < 4 or i >= 8 else f"{i}" + "x" * 5000 for i in range(12)]
    t = pa.table({"id": [f"p{i}" for i in range(12)], "text": texts})
    pq.write_table(t, tmp_path / "a.parquet", row_group_size=4, compression="zstd")
    meta = pq.ParquetFile(tmp_path / "a.parquet").metadata
    sizes = [meta.row_group(i).total_byte_size for i in range(3)]
    assert sizes[1] > 4 * 1000 > sizes[0]  # what the bound sees: uncompressed, from the metadata
    res = run(tmp_path / "a.parquet", tmp_path, max_record_bytes=1000)
    assert_accounting(res)
    assert res.table.column("doc_id").to_pylist() == [f"p{i}" for i in (0, 1, 2, 3, 8, 9, 10, 11)]
    # one reject for the group's 4 rows, counted as one input row
    assert [(r["reason"], r["source_row"]) for r in res.rejects] == [("row_group_too_large", 4)]
    assert res.input_rows == 8 + 1 and "max_record_bytes=1000" in res.rejects[0]["detail"]
    # the groups' sizes also count against max_file_bytes
    res = run(tmp_path / "a.parquet", tmp_path, max_record_bytes=10_000, max_file_bytes=sizes[0] + 1)
    assert_accounting(res)
    assert res.table.column("doc_id").to_pylist() == ["p0", "p1", "p2", "p3"]
    assert [(r["reason"], r["source_row"]) for r in res.rejects] == [("file_too_large", 4)]
