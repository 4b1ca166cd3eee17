"""Read committed partitions through their manifest (never a half-replaced set of files)."""

from __future__ import annotations

from xlmflow import storage


def partition_files(out: str, dataset: str, date: str) -> list[str]:
    """URIs of the dataset's files in the committed partition; [] when it is not committed."""
    from tasks.collect import read_manifest

    m = read_manifest(out, date)
    if m is None:
        return []
    return [storage.join(out, f["path"]) for f in m["files"].get(dataset, [])]


def read_partition(out: str, dataset: str, date: str):  # noqa: ANN201 - pyarrow is imported lazily
    """The dataset of a committed partition as one Arrow table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for uri in partition_files(out, dataset, date):
        fs, path = storage.fs_for(uri)
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f))
    return pa.concat_tables(tables) if tables else None
