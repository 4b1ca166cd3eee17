"""Format readers: one input file (local or s3://) -> a stream of `(source_row, value, raw)` records.

`value` is the parsed record (a dict for CSV/TSV/Parquet/txt; any JSON value for JSONL) or a `Bad`
when the reader itself already knows the row is unusable (invalid_json, invalid_utf8, truncated_input).
`raw` is the row's bytes/str for reject excerpts, or None (the caller then dumps `value`).

Row numbers (`source_row`):
- JSONL: the 1-based physical line number; blank lines are skipped silently (they are not rows) but
  still count as lines, so `sed -n Np FILE` shows row N.
- CSV/TSV: the 1-based data record number (header and blank lines excluded, i.e. a pandas index + 1);
  a record may span several lines when a quoted field holds newlines.
- Parquet: the 0-based row index in the file.
- .txt: the whole file is one document, row 0.

Compression (.gz, .zst) is decoded incrementally here rather than through gzip/zstandard file objects:
those either drop the last decoded block or (zstd stream_reader) end silently on a truncated file.
A stream that ends mid-frame yields the rows before the break and then ONE `truncated_input` record.
TSV is parsed with the CSV dialect (double-quote quoting) and a tab delimiter.
`.json` files are read as JSON lines too: a pretty-printed JSON document gives invalid_json rows.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from xlmflow.storage import fs_for

CHUNK = 1 << 20
BOM = b"\xef\xbb\xbf"
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}
KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet",
         ".csv": "csv", ".tsv": "tsv", ".txt": "txt"}  # fmt: skip
SUPPORTED = (
    "JSON lines (.jsonl/.ndjson/.json), .parquet, .csv, .tsv, .txt; JSON/CSV/TSV/txt may end in .gz or .zst"
)

csv.field_size_limit(sys.maxsize)  # texts up to max_text_chars; the 128 KiB default rejects long docs


@dataclass(frozen=True, slots=True)
class Bad:
    """A row the reader could not turn into a value, with its reject reason code."""

    reason: str
    detail: str


Record = tuple[int | None, object, "bytes | str | None"]


def format_of(uri: str) -> tuple[str, str | None] | None:
    """(kind, compression) from the file name, or None when the name is not a supported format."""
    name = uri.rsplit("/", 1)[-1].lower()
    comp = None
    for ext, c in COMPRESSIONS.items():
        if name.endswith(ext):
            name, comp = name[: -len(ext)], c
            break
    for ext, kind in KINDS.items():
        if name.endswith(ext) and not (kind == "parquet" and comp):
            return kind, comp
    return None


class _Truncated(Exception):
    """The compressed stream ended mid-frame, or its data is corrupt after some point."""


def _decompress(f: io.IOBase, comp: str | None) -> Iterator[bytes]:
    """Decoded chunks; handles multi-member gzip / multi-frame zstd; raises _Truncated on a broken end."""
    if comp is None:
        yield from iter(lambda: f.read(CHUNK), b"")
        return
    if comp == "gzip":
        new: Callable = lambda: zlib.decompressobj(wbits=31)  # noqa: E731
        errors: tuple = (zlib.error,)
    else:
        import zstandard

        new = lambda: zstandard.ZstdDecompressor().decompressobj()  # noqa: E731
        errors = (zstandard.ZstdError,)
    d, fed, produced = new(), False, False
    while chunk := f.read(CHUNK):
        while chunk:
            try:
                out = d.decompress(chunk)
            except errors as exc:
                if not produced:  # not this format at all: the caller rejects the whole file
                    raise ValueError(f"not {comp} data: {exc}") from exc
                raise _Truncated(f"corrupt {comp} data: {exc}") from exc
            fed = True
            if out:
                produced = True
                yield out
            chunk = b""
            if d.eof:  # next member/frame starts in unused_data
                chunk, d, fed = d.unused_data, new(), False
    if fed and not d.eof:
        if not produced:
            raise ValueError(f"{comp} stream ends before any data (truncated or not {comp})")
        raise _Truncated(f"{comp} stream ends before its end-of-stream marker (truncated file?)")


class _Stream(io.RawIOBase):
    """Raw byte stream over decoded chunks; a broken end reads as EOF and is kept in `truncated`."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._it, self._buf = chunks, memoryview(b"")
        self.truncated: str | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # noqa: ANN001
        while not self._buf:
            try:
                self._buf = memoryview(next(self._it))
            except StopIteration:
                return 0
            except _Truncated as exc:
                self.truncated = str(exc)
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def read_records(uri: str) -> Iterator[Record]:
    """Records of one file in file order. Raises on a file that cannot be opened or parsed at all."""
    fmt = format_of(uri)
    if fmt is None:
        raise ValueError(f"unsupported file type {uri!r}; supported: {SUPPORTED}")
    kind, comp = fmt
    fs, path = fs_for(uri)
    with fs.open(path, "rb") as f:
        if kind == "parquet":
            yield from _parquet(f)
            return
        raw = _Stream(_decompress(f, comp))
        stream = io.BufferedReader(raw, CHUNK)
        if kind == "jsonl":
            yield from _jsonl(stream, raw)
        elif kind == "txt":
            yield from _txt(stream, raw)
        else:
            yield from _csv(stream, raw, "\t" if kind == "tsv" else ",")


def _jsonl(stream: io.BufferedReader, raw: _Stream) -> Iterator[Record]:
    import orjson

    n = 0
    for n, line in enumerate(stream, 1):  # noqa: B007 - n is used after the loop
        if not line.endswith(b"\n") and raw.truncated:
            yield n, Bad("truncated_input", f"{raw.truncated}; this and any later lines are lost"), line
            return
        body = line[3:] if line.startswith(BOM) else line
        body = body.rstrip(b"\r\n")
        if not body.strip():
            continue
        try:
            yield n, orjson.loads(body), body
        except orjson.JSONDecodeError:
            yield n, _slow_json(body), body
    if raw.truncated:  # the break fell exactly after a newline
        yield n + 1, Bad("truncated_input", f"{raw.truncated}; any later lines are lost"), b""


def _slow_json(body: bytes) -> object:
    """orjson refused the line: say why (bad UTF-8 / bad JSON), or parse what stdlib json accepts
    (NaN, lone surrogates like "\\ud800" - the caller rejects those as unencodable_text)."""
    try:
        s = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Bad("invalid_utf8", f"byte {exc.start} of the line is not UTF-8 ({exc.reason})")
    try:
        return json.loads(s)
    except (ValueError, RecursionError) as exc:
        return Bad("invalid_json", f"malformed JSON: {exc}")


def _txt(stream: io.BufferedReader, raw: _Stream) -> Iterator[Record]:
    data = stream.read()
    if raw.truncated:
        yield 0, Bad("truncated_input", raw.truncated), data
        return
    try:
        yield 0, {"text": data.decode("utf-8-sig")}, None
    except UnicodeDecodeError as exc:
        yield 0, Bad("invalid_utf8", f"byte {exc.start} of the file is not UTF-8 ({exc.reason})"), data


def _csv(stream: io.BufferedReader, raw: _Stream, delimiter: str) -> Iterator[Record]:
    # surrogateescape keeps bad bytes as lone surrogates so one bad row does not stop the file
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    rows = (r for r in csv.reader(text, delimiter=delimiter) if r)  # blank lines are not rows
    header = next(rows, None)
    if header is None:
        if raw.truncated:
            yield 1, Bad("truncated_input", raw.truncated), ""
        return
    n, prev = 0, None
    for row in rows:  # one row of lookahead: after a broken end, the last row is the broken tail
        if prev is not None:
            yield _csv_record(n, header, prev, delimiter)
        n, prev = n + 1, row
    if prev is not None and raw.truncated:
        yield (
            n,
            Bad("truncated_input", f"{raw.truncated}; this and any later rows are lost"),
            delimiter.join(prev),
        )
    elif prev is not None:
        yield _csv_record(n, header, prev, delimiter)
    elif raw.truncated:
        yield 1, Bad("truncated_input", raw.truncated), ""


def _csv_record(n: int, header: list[str], row: list[str], delimiter: str) -> Record:
    line = delimiter.join(row)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError as exc:
        return n, Bad("invalid_utf8", f"record has bytes that are not UTF-8 near char {exc.start}"), line
    rec: dict = dict(zip(header, row, strict=False))
    if len(row) > len(header):
        rec["_extra"] = row[len(header) :]
    return n, rec, line


def _parquet(f: io.IOBase) -> Iterator[Record]:
    import pyarrow.parquet as pq

    n = 0
    for batch in pq.ParquetFile(f).iter_batches(batch_size=8192):
        for rec in batch.to_pylist():
            yield n, rec, None
            n += 1
