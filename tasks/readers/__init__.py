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
- Parquet row groups are sized from the file's metadata before any is read (tasks.readers.parquet).

Compression (.gz, .zst) is decoded incrementally here, in bounded pieces however well the input
compresses (zlib with max_length; pyarrow's zstd stream), rather than through gzip/zstandard file
objects: those either drop the last decoded block or (zstd stream_reader) end silently on a truncated
file. A stream that ends mid-frame yields the rows before the break and then ONE `truncated_input`
record (for CSV, whose records may span lines, the last record parsed is taken as the cut-off one).
TSV is parsed with the CSV dialect (double-quote quoting) and a tab delimiter. `.json` files are read
as JSON lines too: a pretty-printed JSON document gives invalid_json rows.
"""

from __future__ import annotations

from collections.abc import Iterator

from xlmflow.storage import fs_for
from xlmflow.tasks.readers.delimited import csv_records, unique_names
from xlmflow.tasks.readers.parquet import parquet_records
from xlmflow.tasks.readers.stream import (
    MAX_FILE_BYTES,
    MAX_RECORD_BYTES,
    SUPPORTED,
    Bad,
    Counted,
    Lines,
    Record,
    Source,
    decompress,
    format_of,
    range_chunks,
)
from xlmflow.tasks.readers.text import jsonl, txt

__all__ = ["MAX_FILE_BYTES", "MAX_RECORD_BYTES", "SUPPORTED", "Bad", "Record", "format_of", "read_piece",
           "read_records", "unique_names"]  # fmt: skip


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
            yield from parquet_records(f, max_record_bytes, max_file_bytes)
            return
        src = Source(decompress(f, comp), max_file_bytes)
        if kind == "txt":
            yield from txt(src, max_record_bytes)
        elif kind == "jsonl":
            yield from jsonl(Lines(src, max_record_bytes), src)
        else:
            yield from csv_records(src, max_record_bytes, "\t" if kind == "tsv" else ",")


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
            yield from parquet_records(f, max_record_bytes, max_file_bytes, owned=(start, end))
            return
        counted = Counted(range_chunks(f, start, end))
        src = Source(iter(counted), max_file_bytes)
        yield from jsonl(Lines(src, max_record_bytes), src)
        span[0] = counted.lines
