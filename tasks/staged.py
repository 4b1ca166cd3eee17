"""Bucketed staging files: the rows one ingest task hands to the dedup reducers.

A task writes ONE Arrow IPC file per kind of output, whatever the bucket count, so staging holds
splits x kinds objects, not splits x buckets. Rows are buffered per bucket and flushed as record
batches once `flush_rows` are buffered (memory stays bounded however large the split); the file's
batch index per bucket goes back to the driver in the task's summary, and a reducer reads just its
bucket's batches (a memory map locally, ranged GETs on S3).
"""

from __future__ import annotations

from collections.abc import Iterator

from xlmflow import storage

FLUSH_ROWS = 32_768


class BucketWriter:
    def __init__(self, uri: str, schema, buckets: int, flush_rows: int = FLUSH_ROWS) -> None:  # noqa: ANN001
        self.uri, self.schema, self.flush_rows = uri, schema, flush_rows
        self.cols = [[[] for _ in schema.names] for _ in range(buckets)]
        self.index: list[list[int]] = [[] for _ in range(buckets)]
        self.buffered = self.rows = self.batches = 0
        self._ctx = storage.writing(uri)
        self._path = self._ctx.__enter__()
        import pyarrow as pa

        self._sink = pa.OSFile(self._path, "wb")
        opts = pa.ipc.IpcWriteOptions(compression="lz4")
        self._writer = pa.ipc.new_file(self._sink, schema, options=opts)

    def add(self, bucket: int, row: tuple) -> None:
        for col, v in zip(self.cols[bucket], row, strict=True):
            col.append(v)
        self.buffered += 1
        self.rows += 1
        if self.buffered >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        for b, cols in enumerate(self.cols):
            if not cols[0]:
                continue
            batch = pa.RecordBatch.from_arrays(
                [pa.array(c, type=f.type) for c, f in zip(cols, self.schema, strict=True)], schema=self.schema
            )
            self._writer.write_batch(batch)
            self.index[b].append(self.batches)
            self.batches += 1
            for c in cols:
                c.clear()
        self.buffered = 0

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
        import contextlib

        with contextlib.suppress(Exception):
            self._sink.close()
        with contextlib.suppress(Exception):
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)


def read_bucket(uri: str, indices: list[int]) -> Iterator:  # noqa: ANN201
    """The record batches of one bucket, in the order they were written."""
    if not indices:
        return
    import pyarrow as pa

    with storage.open_input_file(uri) as f:
        reader = pa.ipc.open_file(f)
        for i in indices:
            yield reader.get_batch(i)
