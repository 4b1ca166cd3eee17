"""CSV and TSV: records by csv's rules (double-quote quoting, a header row, records that may span lines),
each record over the byte limit passed over unkept."""

from __future__ import annotations

import csv
import re
import sys
from collections.abc import Iterator
from typing import NoReturn

from xlmflow.tasks.readers.stream import BOM, PREVIEW, Bad, Lines, Long, Record, Source, eol, too_long


class TooLong(Exception):
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
    its real end (quotes included) without being kept, and raises TooLong out of the reader."""

    def __init__(self, lines: Lines, delimiter: str) -> None:
        self.lines, self.delimiter = lines, delimiter.encode()
        self.record: list[bytes] = []  # the lines of the record csv.reader is parsing
        self.size = 0
        self.first = True

    def __iter__(self) -> _CsvFeed:
        return self

    def __next__(self) -> str:
        line = next(self.lines)
        if type(line) is Long:
            self._skip(line.head)
        size = self.size + len(line)
        if size - eol(line) > self.lines.limit:
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
        raise TooLong(size, first[:PREVIEW], ended)


def csv_records(src: Source, limit: int, delimiter: str) -> Iterator[Record]:
    # fields cannot outgrow their record; csv's own limit (128 KiB by default) must not be the lower one
    csv.field_size_limit(min(max(limit, 1 << 17), sys.maxsize))
    rows = _csv_rows(_CsvFeed(Lines(src, limit, universal=True), delimiter), delimiter)
    header = next(rows, None)
    if header is None:
        if bad := src.lost("the file"):
            yield 1, bad, ""
        return
    if type(header) is TooLong:
        raise ValueError(f"the CSV header is over max_record_bytes={limit} (raise --max-record-bytes)")
    header = unique_names(header)
    n, prev = 0, None
    for row in rows:  # one row of lookahead: when the file is cut, the last row is the cut-off tail
        if prev is not None:
            yield _csv_record(n, header, prev, delimiter, limit)
        n, prev = n + 1, row
    bad = src.lost("this and any later rows")
    if prev is not None and bad:
        yield n, bad, prev.head if type(prev) is TooLong else delimiter.join(prev)
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


def _csv_rows(feed: _CsvFeed, delimiter: str) -> Iterator[list[str] | TooLong]:
    """Non-blank records, or TooLong for a skipped one; parsing goes on after it on a fresh reader."""
    reader = csv.reader(feed, delimiter=delimiter)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except TooLong as exc:
            reader = csv.reader(feed, delimiter=delimiter)  # the old one is stuck mid-record
            yield exc
            continue
        feed.next_record()
        if row:  # blank lines are not rows
            yield row


def _csv_record(n: int, header: list[str], row: list[str] | TooLong, delimiter: str, limit: int) -> Record:
    if type(row) is TooLong:
        return n, too_long("record", row.size, limit, row.ended), row.head
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
