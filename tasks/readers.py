"""Format readers: one input file (local or s3://) -> a stream of `(source_row, value, raw)` records.

`value` is the parsed record (a dict for CSV/TSV/Parquet/txt; any JSON value for JSONL) or a `Bad`
when the reader itself already knows the row is unusable (invalid_json, invalid_utf8, too_long,
truncated_input, file_too_large, row_group_too_large). `raw` is the row's bytes/str for reject
excerpts, or None (the caller then dumps `value`).

Row numbers (`source_row`):
- JSONL: the 1-based physical line number; blank lines are skipped silently (they are not rows) but
  still count as lines, so `sed -n Np FILE` shows row N.
- CSV/TSV: the 1-based data record number (header and blank lines excluded, i.e. a pandas index + 1);
  a record may span several lines when a quoted field holds newlines.
- Parquet: the 0-based row index in the file.
- .txt: the whole file is one document, row 0.

Memory stays bounded whatever the input, so a hostile file cannot take the run down:
- A line or record over `max_record_bytes` is one `too_long` record holding only its first bytes; the
  rest is passed over unkept and the file goes on after it. A .txt file over it is one such record.
- At most `max_file_bytes` decoded bytes are read from a file: the rows that end before that point
  are kept and the rest of the file is ONE `file_too_large` record, read no further.
- Parquet row groups are sized from the file's metadata before any is read (see `_parquet`).

Compression (.gz, .zst) is decoded incrementally here, in bounded pieces however well the input
compresses (zlib with max_length; pyarrow's zstd stream), rather than through gzip/zstandard file
objects: those either drop the last decoded block or (zstd stream_reader) end silently on a truncated
file. A stream that ends mid-frame yields the rows before the break and then ONE `truncated_input`
record (for CSV, whose records may span lines, the last record parsed is taken as the cut-off one).
TSV is parsed with the CSV dialect (double-quote quoting) and a tab delimiter. `.json` files are read
as JSON lines too: a pretty-printed JSON document gives invalid_json rows.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NoReturn

from xlmflow.schemas import REJECT_RAW_CHARS
from xlmflow.storage import fs_for

CHUNK = 1 << 20
BOM = b"\xef\xbb\xbf"
PREVIEW = 4 * REJECT_RAW_CHARS  # bytes kept of an over-long row: enough for the reject's excerpt
# the RunSettings defaults (12 x max_text_chars + 64 KiB, 32 GiB), for callers that read without settings
MAX_RECORD_BYTES = 12_000_000 + (64 << 10)
MAX_FILE_BYTES = 32 * 1024**3
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}
KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet",
         ".csv": "csv", ".tsv": "tsv", ".txt": "txt"}  # fmt: skip
SUPPORTED = (
    "JSON lines (.jsonl/.ndjson/.json), .parquet, .csv, .tsv, .txt; JSON/CSV/TSV/txt may end in .gz or .zst"
)


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


def read_records(
    uri: str, *, max_record_bytes: int = MAX_RECORD_BYTES, max_file_bytes: int = MAX_FILE_BYTES
) -> Iterator[Record]:
    """Records of one file in file order, in bounded memory: lines/records over `max_record_bytes` and
    the part of the file past `max_file_bytes` come back as `Bad` records (see the module doc).
    Raises on a file that cannot be opened or parsed at all."""
    fmt = format_of(uri)
    if fmt is None:
        raise ValueError(f"unsupported file type {uri!r}; supported: {SUPPORTED}")
    kind, comp = fmt
    fs, path = fs_for(uri)
    with fs.open(path, "rb") as f:
        if kind == "parquet":
            yield from _parquet(f, max_record_bytes, max_file_bytes)
            return
        src = _Source(_decompress(f, comp), max_file_bytes)
        if kind == "txt":
            yield from _txt(src, max_record_bytes)
        elif kind == "jsonl":
            yield from _jsonl(_Lines(src, max_record_bytes), src)
        else:
            yield from _csv(src, max_record_bytes, "\t" if kind == "tsv" else ",")


# --- decoded bytes ---------------------------------------------------------------------------------


class _Truncated(Exception):
    """The compressed stream ended mid-frame, or its data is corrupt after some point."""


def _decompress(f: io.IOBase, comp: str | None) -> Iterator[bytes]:
    """Decoded chunks of at most about CHUNK bytes each, however well the input compresses; handles
    multi-member gzip / multi-frame zstd; raises _Truncated on a broken end."""
    if comp is None:
        yield from iter(lambda: f.read(CHUNK), b"")
    elif comp == "gzip":
        yield from _gunzip(f)
    else:
        yield from _unzstd(f)


def _gunzip(f: io.IOBase) -> Iterator[bytes]:
    new: Callable = lambda: zlib.decompressobj(wbits=31)  # noqa: E731
    d, fed, produced = new(), False, False
    while chunk := f.read(CHUNK):
        fed = True
        while True:
            try:
                out = d.decompress(chunk, CHUNK)  # max_length: a bomb comes out one CHUNK at a time
            except zlib.error as exc:
                if not produced:  # not this format at all: the caller rejects the whole file
                    raise ValueError(f"not gzip data: {exc}") from exc
                raise _Truncated(f"corrupt gzip data: {exc}") from exc
            if out:
                produced = True
                yield out
            if d.eof:  # the next member starts in unused_data
                chunk, d = d.unused_data, new()
                fed = bool(chunk)
                if not chunk:
                    break
            else:
                chunk = d.unconsumed_tail
                if not chunk and len(out) < CHUNK:  # a full CHUNK may leave output pending in zlib
                    break
    if fed and not d.eof:
        if not produced:
            raise ValueError("gzip stream ends before any data (truncated or not gzip)")
        raise _Truncated("gzip stream ends before its end-of-stream marker (truncated file?)")


class _Guarded(io.RawIOBase):
    """The compressed file for pyarrow; remembers the file's own errors so that an I/O failure is
    re-raised as itself rather than taken for bad zstd data."""

    def __init__(self, f: io.IOBase) -> None:
        self._f, self.error = f, None

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        try:
            return self._f.read(n)
        except Exception as exc:
            self.error = exc
            raise


def _unzstd(f: io.IOBase) -> Iterator[bytes]:
    # pyarrow's decoder bounds its output per read (python-zstandard's decompressobj returns all of it
    # at once) and, unlike zstandard's stream_reader, reports a stream that ends mid-frame
    import pyarrow as pa

    raw = _Guarded(f)
    stream = pa.CompressedInputStream(pa.PythonFile(raw, mode="r"), "zstd")
    produced = False
    while True:
        try:
            out = stream.read(CHUNK // 16)  # small reads: a failing read loses what it had decoded
        except OSError as exc:
            if raw.error is not None:
                raise raw.error from None
            if not produced:
                raise ValueError(f"not zstd data: {exc}") from exc
            raise _Truncated(f"corrupt or truncated zstd data: {exc}") from exc
        if not out:
            return
        produced = True
        yield out


class _Source:
    """Decoded chunks of one file, at most `max_bytes` in all; remembers how the stream ended."""

    def __init__(self, chunks: Iterator[bytes], max_bytes: int) -> None:
        self._chunks, self.max_bytes = chunks, max_bytes
        self.truncated: str | None = None  # why the stream broke
        self.over = False  # bytes past max_bytes exist; they were not read

    def __iter__(self) -> Iterator[bytes]:
        room = self.max_bytes
        try:
            for chunk in self._chunks:
                if len(chunk) > room:
                    self.over = True
                    if room:
                        yield chunk[:room]
                    return
                room -= len(chunk)
                yield chunk
        except _Truncated as exc:
            self.truncated = str(exc)

    def lost(self, what: str) -> Bad | None:
        """The reject for the rest of a file that did not end cleanly; `what` names the rows lost."""
        if self.truncated:
            return Bad("truncated_input", f"{self.truncated}; lost: {what}")
        if self.over:
            return Bad(
                "file_too_large",
                f"file has more than max_file_bytes={self.max_bytes} decompressed bytes; not read: {what} "
                "(raise --max-file-bytes to read them)",
            )
        return None


def _too_long(what: str, size: int, limit: int, ended: bool = True) -> Bad:
    size_s = f"{size} bytes" if ended else f"more than {limit} bytes"
    return Bad(
        "too_long",
        f"{what} has {size_s}, over max_record_bytes={limit}; it was skipped unread "
        "(raise --max-record-bytes to read it)",
    )


@dataclass(slots=True)
class _Long:
    """A line over the limit, as far as it was read: the caller skips the rest with `_Lines.skip`."""

    head: bytes


class _Lines:
    r"""Lines (each with its line break) of a byte stream, none longer than `limit` bytes before it.

    Lines end at \n; `universal` (CSV) also ends them at \r or \r\n, as csv expects of a file opened
    with newline="". A longer line comes back as a `_Long` with only its first bytes read; the caller
    then calls `skip(scan)`, which passes over the rest without keeping it: JSONL to the next newline,
    CSV to the end of the record (quoted fields may hold newlines). A normal line costs one find().
    """

    def __init__(self, chunks: Iterable[bytes], limit: int, universal: bool = False) -> None:
        self._chunks, self.limit, self._universal = iter(chunks), limit, universal
        self._buf, self._pos, self._cr = b"", 0, False

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> bytes | _Long:
        buf, pos = self._buf, self._pos
        i, j = self._break(buf, pos)
        if 0 <= i and i - pos <= self.limit:
            self._pos = j
            return buf[pos:j]
        return self._long_or_split()

    def _break(self, buf: bytes, pos: int) -> tuple[int, int]:
        """Start and end of the next line break, or (-1, -1)."""
        if self._cr:  # only chunks that hold a CR pay for the regex
            m = _EOL.search(buf, pos)
            return (m.start(), m.end()) if m else (-1, -1)
        i = buf.find(b"\n", pos)
        return i, i + 1

    def _load(self) -> bytes:
        buf = self._buf = next(self._chunks, b"")
        self._pos, self._cr = 0, self._universal and b"\r" in buf
        return buf

    def _long_or_split(self) -> bytes | _Long:
        """The line is over the limit, or runs on into the next chunks."""
        parts: list[bytes] = []
        size, buf, pos = 0, self._buf, self._pos
        while True:
            i, j = self._break(buf, pos)
            end = len(buf) if i < 0 else i
            if size + end - pos > self.limit:
                parts.append(buf[pos:end])
                self._pos = end
                return _Long(b"".join(parts))
            if i >= 0:
                parts.append(buf[pos:j])
                self._pos = j
                return b"".join(parts)
            parts.append(buf[pos:])
            size += len(buf) - pos
            buf, pos = self._load(), 0
            if not buf:  # the end: the last line has no line break
                if size:
                    return b"".join(parts)
                raise StopIteration

    def skip(self, scan: Callable[[bytes, int], int]) -> tuple[int, bool]:
        """Pass over bytes until `scan(buf, pos)` finds the record's end: (bytes passed, whether it ended)."""
        n = 0
        while True:
            buf, pos = self._buf, self._pos
            end = scan(buf, pos)
            if end >= 0:
                self._pos = end
                return n + end - pos, True
            n += len(buf) - pos
            if not self._load():
                return n, False


_EOL = re.compile(rb"\r\n?|\n")


def _to_newline(buf: bytes, pos: int) -> int:
    r"""A `scan` for `_Lines.skip`: the index after the next \n, or -1."""
    i = buf.find(b"\n", pos)
    return i + 1 if i >= 0 else -1


def _eol(line: bytes) -> int:
    """Length of the line break that ends `line` (0 for the last line of a file without one)."""
    if line[-1:] == b"\n":
        return 2 if line[-2:-1] == b"\r" else 1
    return 1 if line[-1:] == b"\r" else 0


# --- formats ---------------------------------------------------------------------------------------


def _jsonl(lines: _Lines, src: _Source) -> Iterator[Record]:
    import orjson

    n = 0
    for n, line in enumerate(lines, 1):  # noqa: B007 - n is used after the loop
        if type(line) is _Long:
            more, ended = lines.skip(_to_newline)
            head = line.head[:PREVIEW]
            if not ended and (bad := src.lost("this and any later lines")):
                yield n, bad, head
                return
            yield n, _too_long("line", len(line.head) + more, lines.limit, ended), head
            continue
        if not line.endswith(b"\n") and (bad := src.lost("this and any later lines")):
            yield n, bad, line
            return
        body = line[3:] if line.startswith(BOM) else line
        body = body.rstrip(b"\r\n")
        if not body.strip():
            continue
        if _LONG_DIGITS.search(body):  # maybe an integer past 64 bits, which orjson turns into a float
            yield n, _slow_json(body), body
            continue
        try:
            yield n, orjson.loads(body), body
        except orjson.JSONDecodeError:
            yield n, _slow_json(body), body
    if bad := src.lost("any later lines"):  # the break fell exactly after a newline
        yield n + 1, bad, b""


# 19+ digits in a row: stdlib json parses such integers exactly (two ids past 2**64 would otherwise
# round to the same float); inside a string it costs only the slower parse
_LONG_DIGITS = re.compile(rb"\d{19}")


def _slow_json(body: bytes) -> object:
    """A line orjson refused or could misread (integers past 64 bits): say why it is bad (bad UTF-8 /
    bad JSON), or parse what stdlib json accepts (NaN, lone surrogates like "\\ud800", which the caller
    rejects as unencodable_text; big integers, exactly)."""
    try:
        s = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Bad("invalid_utf8", f"byte {exc.start} of the line is not UTF-8 ({exc.reason})")
    try:
        return json.loads(s)
    except (ValueError, RecursionError) as exc:
        return Bad("invalid_json", f"malformed JSON: {exc}")


def _txt(src: _Source, limit: int) -> Iterator[Record]:
    parts: list[bytes] = []
    size = 0
    for chunk in src:
        size += len(chunk)
        if size > limit:  # stop reading: the file is one document, and it is too long
            yield 0, _too_long("file (one document)", size, limit, False), (parts or [chunk])[0][:PREVIEW]
            return
        parts.append(chunk)
    data = b"".join(parts)
    if bad := src.lost("the document"):
        yield 0, bad, data[:PREVIEW]
        return
    try:
        yield 0, {"text": data.decode("utf-8-sig")}, None
    except UnicodeDecodeError as exc:
        yield 0, Bad("invalid_utf8", f"byte {exc.start} of the file is not UTF-8 ({exc.reason})"), data


class _TooLong(Exception):
    """Raised through csv.reader when the record it is parsing is over the limit (and was skipped)."""

    def __init__(self, size: int, head: bytes, ended: bool) -> None:
        super().__init__(size)
        self.size, self.head, self.ended = size, head, ended


_START, _UNQUOTED, _QUOTED, _QUOTE_AT_END = range(4)
# the rest of a quoted field up to its closing quote; possessive, so "" pairs are never split
_QUOTED_REST = re.compile(rb'[^"]*+(?:""[^"]*+)*+"')


class _CsvScan:
    """A `scan` that finds where a CSV record ends without keeping it, by csv's rules (double-quote
    quoting, not strict, line breaks as with newline=""): one regex call per quoted field or line,
    not a Python step per byte."""

    def __init__(self, delimiter: bytes) -> None:
        self.delimiter = delimiter[0]
        self._unquoted = re.compile(rb"(\r\n?|\n)|" + re.escape(delimiter) + b'"')
        self.state = _START

    def __call__(self, buf: bytes, pos: int) -> int:
        st, n = self.state, len(buf)
        while pos < n:
            if st in (_START, _QUOTE_AT_END):
                # a field opens with a quote; after a quote that ended the last piece, "" is a quote
                if buf[pos] == 0x22:
                    st, pos = _QUOTED, pos + 1
                    continue
                st = _UNQUOTED
            if st == _QUOTED:
                m = _QUOTED_REST.match(buf, pos)
                if m is None:  # the field goes on past this piece
                    break
                pos = m.end()
                st = _QUOTE_AT_END if pos == n else _UNQUOTED
                continue
            m = self._unquoted.search(buf, pos)  # a line break, or a delimiter opening a quoted field
            if m is None:
                st = _START if buf[n - 1] == self.delimiter else _UNQUOTED
                break
            if m.group(1):
                self.state = _START
                return m.end()
            st, pos = _QUOTED, m.end()
        self.state = st
        return -1


class _CsvFeed:
    """Text lines for csv.reader, at most `limit` bytes per record. A longer record is passed over to
    its real end (quotes included) without being kept, and raises _TooLong out of the reader."""

    def __init__(self, lines: _Lines, delimiter: str) -> None:
        self.lines, self.delimiter = lines, delimiter.encode()
        self.record: list[bytes] = []  # the lines of the record csv.reader is parsing
        self.size = 0
        self.first = True

    def __iter__(self) -> _CsvFeed:
        return self

    def __next__(self) -> str:
        line = next(self.lines)
        if type(line) is _Long:
            self._skip(line.head)
        size = self.size + len(line)
        if size - _eol(line) > self.lines.limit:
            self._skip(line)
        self.record.append(line)
        self.size = size
        if self.first:
            self.first = False
            if line.startswith(BOM):
                line = line[3:]
        # surrogateescape keeps bad bytes as lone surrogates so one bad row does not stop the file
        return line.decode("utf-8", "surrogateescape")

    def next_record(self) -> None:
        """csv.reader returned a record: the next line starts a new one."""
        self.record.clear()
        self.size = 0

    def _skip(self, head: bytes) -> NoReturn:
        scan = _CsvScan(self.delimiter)
        for line in self.record:  # where the record stands (inside quotes or not) after what we have
            scan(line, 0)
        size, ended = self.size + len(head), scan(head, 0) >= 0
        if not ended:
            more, ended = self.lines.skip(scan)
            size += more
        first = self.record[0] if self.record else head
        self.next_record()
        raise _TooLong(size, first[:PREVIEW], ended)


def _csv(src: _Source, limit: int, delimiter: str) -> Iterator[Record]:
    # fields cannot outgrow their record; csv's own limit (128 KiB by default) must not be the lower one
    csv.field_size_limit(min(max(limit, 1 << 17), sys.maxsize))
    rows = _csv_rows(_CsvFeed(_Lines(src, limit, universal=True), delimiter), delimiter)
    header = next(rows, None)
    if header is None:
        if bad := src.lost("the file"):
            yield 1, bad, ""
        return
    if type(header) is _TooLong:
        raise ValueError(f"the CSV header is over max_record_bytes={limit} (raise --max-record-bytes)")
    header = unique_names(header)
    n, prev = 0, None
    for row in rows:  # one row of lookahead: when the file is cut, the last row is the cut-off tail
        if prev is not None:
            yield _csv_record(n, header, prev, delimiter, limit)
        n, prev = n + 1, row
    bad = src.lost("this and any later rows")
    if prev is not None and bad:
        yield n, bad, prev.head if type(prev) is _TooLong else delimiter.join(prev)
    elif prev is not None:
        yield _csv_record(n, header, prev, delimiter, limit)
    elif bad:
        yield 1, bad, ""


def unique_names(names: list[str]) -> list[str]:
    """Column names made unique as pandas does: a repeated `x` becomes `x.1`, `x.2`, ... (skipping names
    the header already has). A record is a dict, so a repeated name would otherwise keep only one of
    its values, silently; this way the first keeps its name (and its role: `text`, `id`, ...) and the
    others reach `meta`."""
    if len(set(names)) == len(names):
        return names
    taken, out = set(names), []
    seen: set[str] = set()
    for name in names:
        if name in seen:
            k = 1
            while f"{name}.{k}" in taken:
                k += 1
            name = f"{name}.{k}"
            taken.add(name)
        seen.add(name)
        out.append(name)
    return out


def _csv_rows(feed: _CsvFeed, delimiter: str) -> Iterator[list[str] | _TooLong]:
    """Non-blank records, or _TooLong for a skipped one; parsing goes on after it on a fresh reader."""
    reader = csv.reader(feed, delimiter=delimiter)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except _TooLong as exc:
            reader = csv.reader(feed, delimiter=delimiter)  # the old one is stuck mid-record
            yield exc
            continue
        feed.next_record()
        if row:  # blank lines are not rows
            yield row


def _csv_record(n: int, header: list[str], row: list[str] | _TooLong, delimiter: str, limit: int) -> Record:
    if type(row) is _TooLong:
        return n, _too_long("record", row.size, limit, row.ended), row.head
    line = delimiter.join(row)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError as exc:
        return n, Bad("invalid_utf8", f"record has bytes that are not UTF-8 near char {exc.start}"), line
    rec: dict = dict(zip(header, row, strict=False))
    if len(row) > len(header):
        rec["_extra"] = row[len(header) :]
    return n, rec, line


# Parquet metadata gives each row group's uncompressed (encoded) size before anything is read. A group
# whose rows average more than max_record_bytes holds rows over the limit and would need at least
# rows x limit bytes to read, so it is one row_group_too_large reject, unread; the groups' sizes also
# count against max_file_bytes. But encoded is not decoded: a dictionary- or delta-encoded value
# repeated over many rows decodes far larger than the metadata says (10 KB of file, 4 GB of text). So
# rows are decoded a few at a time (BATCH_ROWS at most, fewer when the metadata says they are large),
# and every decoded row is measured before it becomes Python values: one over max_record_bytes is a
# too_long reject, and decoded bytes count against max_file_bytes as they come.
BATCH_BYTES = 64 << 20
BATCH_ROWS = 64


def _parquet(
    f: io.IOBase, record_limit: int, file_limit: int, owned: tuple[int, int] | None = None
) -> Iterator[Record]:
    """`owned`: read only the row groups whose first page starts in this byte range (a file piece);
    row numbers and the file limit still count every group before them (by their metadata sizes)."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(f)
    # string columns stay dictionary-encoded as read: one repeated value is then held once per batch,
    # not once per row, until each row has been measured
    strings = [fl.name for fl in pf.schema_arrow if _is_bytes(fl.type)]
    if strings:
        pf = pq.ParquetFile(f, read_dictionary=strings)
    names = pf.schema_arrow.names
    renamed = unique_names(names)  # Parquet allows repeated column names too
    n = used = 0
    for i in range(pf.metadata.num_row_groups):
        group = pf.metadata.row_group(i)
        rows, size = group.num_rows, group.total_byte_size
        if not rows:
            continue
        if owned and not owned[0] <= _group_start(group) < owned[1]:
            if used + size > file_limit:
                return  # the piece that owns this group says so
            used, n = used + size, n + rows
            continue
        if used + size > file_limit:
            why = (
                f"row groups {i}.. (from row {n} on) take the file past max_file_bytes={file_limit} "
                "uncompressed bytes; they are not read (raise --max-file-bytes to read them)"
            )
            yield n, Bad("file_too_large", why), ""
            return
        if size > rows * record_limit:
            why = (
                f"row group {i} (rows {n}..{n + rows - 1}) has {size} uncompressed bytes, over {rows} rows "
                f"x max_record_bytes={record_limit}; its rows are not read (raise --max-record-bytes)"
            )
            yield n, Bad("row_group_too_large", why), ""
            used, n = used + size, n + rows
            continue
        batch_rows = max(1, min(BATCH_ROWS, BATCH_BYTES * rows // max(size, 1)))
        decoded = 0
        for b in pf.iter_batches(batch_size=batch_rows, row_groups=[i], use_threads=False):
            sizes = _row_bytes(b)
            b = b if renamed is names else b.rename_columns(renamed)
            if used + decoded + sum(sizes) > file_limit:  # the row that passes the limit, and the rest
                for k, nbytes in enumerate(sizes):
                    decoded += nbytes
                    if used + decoded > file_limit:
                        break
                    yield from _parquet_rows(b.slice(k, 1), n, [nbytes], record_limit)
                    n += 1
                why = (
                    f"rows {n}.. (row group {i} on) decode past max_file_bytes={file_limit} bytes; they are "
                    "not read (raise --max-file-bytes to read them)"
                )
                yield n, Bad("file_too_large", why), ""
                return
            decoded += sum(sizes)
            yield from _parquet_rows(b, n, sizes, record_limit)
            n += b.num_rows
        used += max(size, decoded)


def _parquet_rows(b, n: int, sizes: list[int], limit: int) -> Iterator[Record]:  # noqa: ANN001
    """The rows of a decoded batch from row n on; those over the limit are too_long, not converted."""
    if not sizes or max(sizes) <= limit:
        for rec in b.to_pylist():
            yield n, rec, None
            n += 1
        return
    heads = _heads(b)
    for k, nbytes in enumerate(sizes):
        if nbytes > limit:
            why = (
                f"row has {nbytes} bytes decoded, over max_record_bytes={limit}; it was skipped "
                "(raise --max-record-bytes to read it)"
            )
            head = json.dumps({c: h[k] for c, h in heads.items()}, ensure_ascii=False)
            yield n + k, Bad("too_long", why), head
        else:
            (rec,) = b.slice(k, 1).to_pylist()
            yield n + k, rec, None


def _row_bytes(b) -> list[int]:  # noqa: ANN001
    """Decoded bytes of each row of a record batch: the bytes of its string/binary values (dictionary
    values counted at every row that refers to them), the width of fixed-size ones, and the referenced
    buffer range of nested ones."""
    import pyarrow as pa
    import pyarrow.compute as pc

    total = pa.array([0] * b.num_rows, pa.int64())
    for col in b.columns:
        t = col.type
        if pa.types.is_dictionary(t) and _is_bytes(t.value_type):
            sizes = pc.binary_length(col.dictionary).take(col.indices)
        elif _is_bytes(t):
            sizes = pc.binary_length(col)
        elif pa.types.is_null(t):
            continue
        elif pa.types.is_primitive(t) or pa.types.is_fixed_size_binary(t) or pa.types.is_decimal(t):
            sizes = pa.array([max(1, t.bit_width // 8)] * b.num_rows, pa.int64())
        else:  # nested: the buffer range each row refers to
            sizes = pa.array([col.slice(k, 1).nbytes for k in range(len(col))], pa.int64())
        total = pc.add(total, pc.fill_null(sizes.cast(pa.int64()), 0))
    return total.to_pylist()


def _is_bytes(t) -> bool:  # noqa: ANN001
    import pyarrow as pa

    kinds = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view, pa.types.is_binary,
             pa.types.is_large_binary, pa.types.is_binary_view)  # fmt: skip
    return any(k(t) for k in kinds)


def _heads(b) -> dict[str, list]:  # noqa: ANN001
    """The start of every string value of a batch, by column: the excerpts of its too_long rows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    heads = {}
    for name, col in zip(b.schema.names, b.columns, strict=True):
        if pa.types.is_dictionary(col.type):  # cut the dictionary's values, then spread them to rows
            if pa.types.is_string(col.type.value_type) or pa.types.is_large_string(col.type.value_type):
                heads[name] = (
                    pc.utf8_slice_codeunits(col.dictionary, 0, PREVIEW).take(col.indices).to_pylist()
                )
        elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            heads[name] = pc.utf8_slice_codeunits(col, 0, PREVIEW).to_pylist()
    return heads


def _group_start(group) -> int:  # noqa: ANN001
    col = group.column(0)
    first = col.dictionary_page_offset if col.has_dictionary_page else None
    return min(x for x in (first, col.data_page_offset) if x is not None and x >= 0)


# --- pieces of a file (input splits) ---------------------------------------------------------------


def read_piece(
    uri: str,
    start: int,
    end: int,
    *,
    max_record_bytes: int = MAX_RECORD_BYTES,
    max_file_bytes: int = MAX_FILE_BYTES,
    span: list[int],
) -> Iterator[Record]:
    """Records of one byte range [start, end) of a file, for reading one file on several workers.

    JSON lines (uncompressed): the lines that *start* in the range, numbered 1.. within the range; the
    caller adds the lines of the earlier ranges (`span[0]`, set once the records are read, is this
    range's line count). Parquet: the row groups whose first page starts in the range, numbered by
    their row in the whole file (the footer gives every group's row count), so `span[0]` is 0.
    """
    kind, comp = format_of(uri) or ("", None)
    if comp or kind not in ("jsonl", "parquet"):
        raise ValueError(f"{uri!r} cannot be read in pieces")
    fs, path = fs_for(uri)
    with fs.open(path, "rb") as f:
        if kind == "parquet":
            span[0] = 0
            yield from _parquet(f, max_record_bytes, max_file_bytes, owned=(start, end))
            return
        counted = _Counted(_range_chunks(f, start, end))
        src = _Source(iter(counted), max_file_bytes)
        yield from _jsonl(_Lines(src, max_record_bytes), src)
        span[0] = counted.lines


class _Counted:
    """Chunks passed through, counting the lines in them (a last line without a newline counts)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self.lines = chunks, 0

    def __iter__(self) -> Iterator[bytes]:
        last = b"\n"
        for chunk in self._chunks:
            if chunk:
                self.lines += chunk.count(b"\n")
                last = chunk[-1:]
                yield chunk
        if last != b"\n":
            self.lines += 1


def _range_chunks(f: io.IOBase, start: int, end: int) -> Iterator[bytes]:
    """The bytes of the lines that start in [start, end): from the first line start at or after `start`
    to the end of the line that holds byte end-1."""
    pos = start
    buf = b""
    if start > 0:
        f.seek(start - 1)
        if f.read(1) != b"\n":  # mid-line: that line belongs to the range before
            while True:
                chunk = f.read(CHUNK)
                if not chunk:
                    return
                i = chunk.find(b"\n")
                if i >= 0:
                    pos, buf = pos + i + 1, chunk[i + 1 :]
                    break
                pos += len(chunk)
    else:
        f.seek(0)
    if pos >= end:
        return
    last = b"\n"
    while True:
        if not buf:
            buf = f.read(CHUNK)
            if not buf:
                return
        if pos + len(buf) < end:
            pos += len(buf)
            last = buf[-1:]
            yield buf
            buf = b""
            continue
        head, buf = buf[: end - pos], buf[end - pos :]
        if head:
            last = head[-1:]
            yield head
        break
    # finish the line that holds byte end-1, unless it ended right there
    while last != b"\n":
        if not buf:
            buf = f.read(CHUNK)
            if not buf:
                return
        i = buf.find(b"\n")
        if i >= 0:
            yield buf[: i + 1]
            return
        yield buf
        buf = b""
