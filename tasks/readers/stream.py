"""Decoded bytes of one input file, in bounded memory: the format from the file name, decompression in
bounded pieces, the file limit (`Source`), lines of bounded length (`Lines`) and the byte range of a
file piece (`range_chunks`). See the package's doc for the guarantees."""

from __future__ import annotations

import io
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa

from xlmflow.schemas import REJECT_RAW_CHARS

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


# --- decoded bytes ---------------------------------------------------------------------------------


class Truncated(Exception):
    """The compressed stream ended mid-frame, or its data is corrupt after some point."""


def decompress(f: io.IOBase, comp: str | None) -> Iterator[bytes]:
    """Decoded chunks of at most about CHUNK bytes each, however well the input compresses; handles
    multi-member gzip / multi-frame zstd; raises Truncated on a broken end."""
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
                raise Truncated(f"corrupt gzip data: {exc}") from exc
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
        raise Truncated("gzip stream ends before its end-of-stream marker (truncated file?)")


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
            raise Truncated(f"corrupt or truncated zstd data: {exc}") from exc
        if not out:
            return
        produced = True
        yield out


class Source:
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
        except Truncated as exc:
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


def too_long(what: str, size: int, limit: int, ended: bool = True) -> Bad:
    size_s = f"{size} bytes" if ended else f"more than {limit} bytes"
    return Bad(
        "too_long",
        f"{what} has {size_s}, over max_record_bytes={limit}; it was skipped unread "
        "(raise --max-record-bytes to read it)",
    )


@dataclass(slots=True)
class Long:
    """A line over the limit, as far as it was read: the caller skips the rest with `Lines.skip`."""

    head: bytes


class Lines:
    r"""Lines (each with its line break) of a byte stream, none longer than `limit` bytes before it.

    Lines end at \n; `universal` (CSV) also ends them at \r or \r\n, as csv expects of a file opened
    with newline="". A longer line comes back as a `Long` with only its first bytes read; the caller
    then calls `skip(scan)`, which passes over the rest without keeping it: JSONL to the next newline,
    CSV to the end of the record (quoted fields may hold newlines). A normal line costs one find().
    """

    def __init__(self, chunks: Iterable[bytes], limit: int, universal: bool = False) -> None:
        self._chunks, self.limit, self._universal = iter(chunks), limit, universal
        self._buf, self._pos, self._cr = b"", 0, False

    def __iter__(self) -> Lines:
        return self

    def __next__(self) -> bytes | Long:
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

    def _long_or_split(self) -> bytes | Long:
        """The line is over the limit, or runs on into the next chunks."""
        parts: list[bytes] = []
        size, buf, pos = 0, self._buf, self._pos
        while True:
            i, j = self._break(buf, pos)
            end = len(buf) if i < 0 else i
            if size + end - pos > self.limit:
                parts.append(buf[pos:end])
                self._pos = end
                return Long(b"".join(parts))
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


def to_newline(buf: bytes, pos: int) -> int:
    r"""A `scan` for `Lines.skip`: the index after the next \n, or -1."""
    i = buf.find(b"\n", pos)
    return i + 1 if i >= 0 else -1


def eol(line: bytes) -> int:
    """Length of the line break that ends `line` (0 for the last line of a file without one)."""
    if line[-1:] == b"\n":
        return 2 if line[-2:-1] == b"\r" else 1
    return 1 if line[-1:] == b"\r" else 0


# --- pieces of a file (input splits) ---------------------------------------------------------------


class Counted:
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


def range_chunks(f: io.IOBase, start: int, end: int) -> Iterator[bytes]:
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
