"""Parquet: rows sized from the file's metadata before any row group is read, and measured while still
dictionary-encoded, so a file cannot expand past the limits in memory."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from xlmflow.tasks.readers.delimited import unique_names
from xlmflow.tasks.readers.stream import PREVIEW, Bad, Record

BATCH_BYTES = 64 << 20
BATCH_ROWS = 64


def parquet_records(
    f: io.IOBase, record_limit: int, file_limit: int, owned: tuple[int, int] | None = None
) -> Iterator[Record]:
    """`owned`: read only the row groups whose first page starts in this byte range (a file piece);
    row numbers and the file limit still count every group before them (by their metadata sizes)."""
    pf = _open(f)
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


def _open(f: io.IOBase) -> pq.ParquetFile:
    pf = pq.ParquetFile(f)
    # string columns stay dictionary-encoded as read: one repeated value is then held once per batch,
    # not once per row, until each row has been measured
    strings = [fl.name for fl in pf.schema_arrow if _is_bytes(fl.type)]
    return pq.ParquetFile(f, read_dictionary=strings) if strings else pf


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
    kinds = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view, pa.types.is_binary,
             pa.types.is_large_binary, pa.types.is_binary_view)  # fmt: skip
    return any(k(t) for k in kinds)


def _heads(b) -> dict[str, list]:  # noqa: ANN001
    """The start of every string value of a batch, by column: the excerpts of its too_long rows."""
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
