"""Bucketed staging files: the rows one ingest task hands to the dedup reducers.

A task writes ONE Arrow IPC file per kind of output, whatever the bucket count, so staging holds
splits x kinds objects, not splits x buckets. Rows are buffered and flushed as record batches once
`flush_rows` rows or about `flush_bytes` bytes of strings are buffered, whichever comes first (memory
stays bounded however large the split or its rows); the file's batch index per bucket goes back to the
driver in the task's summary, and a reducer reads just its bucket's batches (a memory map locally,
ranged GETs on S3).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pyarrow as pa

from xlmflow import storage

FLUSH_ROWS = 32_768
FLUSH_BYTES = 32 << 20  # counted as str/bytes lengths: up to 4x that as UTF-8


class BucketWriter:
    def __init__(self, uri: str, schema, buckets: int, flush_rows: int = FLUSH_ROWS,  # noqa: ANN001
                 flush_bytes: int = FLUSH_BYTES) -> None:  # fmt: skip
        self.uri, self.schema, self.flush_rows, self.flush_bytes = uri, schema, flush_rows, flush_bytes
        self.cols = [[[] for _ in schema.names] for _ in range(buckets)]
        self.index: list[list[int]] = [[] for _ in range(buckets)]
        self.buffered = self.buffered_bytes = self.rows = self.batches = 0
        self._ctx = storage.writing(uri)
        self._path = self._ctx.__enter__()

        self._sink = pa.OSFile(self._path, "wb")
        opts = pa.ipc.IpcWriteOptions(compression="lz4")
        self._writer = pa.ipc.new_file(self._sink, schema, options=opts)

    def add(self, bucket: int, row: tuple) -> None:
        size = 0
        for col, v in zip(self.cols[bucket], row, strict=True):
            col.append(v)
            if type(v) is str or type(v) is bytes:
                size += len(v)
        self.buffered += 1
        self.buffered_bytes += size
        self.rows += 1
        if self.buffered >= self.flush_rows or self.buffered_bytes >= self.flush_bytes:
            self.flush()

    def flush(self) -> None:
        for b, cols in enumerate(self.cols):
            if not cols[0]:
                continue
            # a column past 2 GiB (huge rows: flush_bytes bounds the buffer, not a row) comes back from
            # pa.array in several chunks: a table takes them, and each of its batches is written and indexed
            table = pa.Table.from_arrays(
                [pa.array(c, type=f.type) for c, f in zip(cols, self.schema, strict=True)], schema=self.schema
            )
            for batch in table.to_batches():
                self._writer.write_batch(batch)
                self.index[b].append(self.batches)
                self.batches += 1
            for c in cols:
                c.clear()
        self.buffered = self.buffered_bytes = 0

    def close(self) -> list[list[int]]:
        """Write the file (visible whole, or not at all); returns the batch indices of every bucket."""
        try:
            self.flush()
            self._writer.close()
            self._sink.close()
        except BaseException as exc:
            self._ctx.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self._ctx.__exit__(None, None, None)
        return self.index

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._sink.close()
        with contextlib.suppress(Exception):
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)


def read_bucket(uri: str, indices: list[int]) -> Iterator:  # noqa: ANN201
    """The record batches of one bucket, in the order they were written."""
    if not indices:
        return

    with storage.open_input_file(uri) as f:
        reader = pa.ipc.open_file(f)
        for i in indices:
            yield reader.get_batch(i)
