"""Read committed partitions through their manifest (never a half-replaced set of files).

A `--force` run may replace the partition while a reader works: its old files are deleted right after
the new manifest lands. A reader that loses a file that way re-reads the manifest and starts over on
the new set, so it returns one committed version whole, never a mix and never an error.
"""

from __future__ import annotations

import time

from xlmflow import storage

RETRIES = 5


def partition_files(out: str, dataset: str, date: str) -> list[str]:
    """URIs of the dataset's files in the committed partition; [] when it is not committed."""
    from tasks.collect import read_manifest

    m = read_manifest(out, date)
    if m is None:
        return []
    return [storage.join(out, f["path"]) for f in m["files"].get(dataset, [])]


def read_partition(out: str, dataset: str, date: str):  # noqa: ANN201 - pyarrow is imported lazily
    """The dataset of a committed partition as one Arrow table (None when not committed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.collect import read_manifest

    for attempt in range(RETRIES + 1):
        m = read_manifest(out, date)
        if m is None:
            return None
        try:
            tables = []
            for f in m["files"].get(dataset, []):
                fs, path = storage.fresh(storage.join(out, f["path"]))
                with fs.open(path, "rb") as fh:
                    tables.append(pq.read_table(fh))
            return pa.concat_tables(tables) if tables else None
        except FileNotFoundError:
            now = read_manifest(out, date)
            if now is not None and now.get("run_id") == m.get("run_id"):
                raise  # the committed set itself lost a file: that is damage, not a replacement
            time.sleep(0.05 * (attempt + 1))  # replaced under us: read the new version
    raise RuntimeError(f"partition {date} of {out} kept changing while it was read; try again")
