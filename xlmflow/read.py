"""Read committed partitions: the Delta table versions their manifest pins (never half a commit).

A `--force` run commits each dataset's table and then the manifest. A reader of the manifest reads the
versions it pins, so it gets one run's tables whole, even while another run is between its first table
commit and its manifest. Superseded files are kept until `xlmflow vacuum`, so a version stays readable
for the retention period (7 days by default) after it is replaced.
"""

from __future__ import annotations

from typing import Any

import pyarrow.fs as pa_fs

from xlmflow import delta, storage
from xlmflow.errors import FatalError
from xlmflow.manifest import read_manifest
from xlmflow.settings import check_date


def pinned_version(out: str, dataset: str, date: str) -> int | None:
    """The table version holding the committed partition of `dataset`; None when not committed."""
    m = read_manifest(out, date)
    return None if m is None else (m.get("tables") or {}).get(dataset)


def read_partition(out: str, dataset: str, date: str):  # noqa: ANN201 - pyarrow is imported lazily
    """The dataset of a committed partition as one Arrow table (None when not committed).

    Columns are the dataset's columns plus `date` (the table's partition column).
    """
    version = pinned_version(out, dataset, date)
    return None if version is None else read_version(out, dataset, date, version)


def arrow_filesystem(uri: str):  # noqa: ANN201
    """Arrow's own filesystem rooted at a table, with the credentials delta-rs gets.

    deltalake's default pyarrow reader goes through a Python file handler: Arrow then holds Python
    buffers in its read-ahead cache and may free the last of them on an I/O thread after the
    interpreter began to exit, which aborts the process (exit 134, "terminate called without an
    active exception"). Arrow's native filesystems hold no Python objects.
    """
    if not storage.is_remote(uri):
        return pa_fs.SubTreeFileSystem(uri, pa_fs.LocalFileSystem())
    opts = delta.storage_options(uri) or {}
    kw: dict[str, Any] = {"region": opts.get("AWS_REGION")}
    if "AWS_ACCESS_KEY_ID" in opts:
        kw.update(access_key=opts["AWS_ACCESS_KEY_ID"], secret_key=opts["AWS_SECRET_ACCESS_KEY"])
        kw["session_token"] = opts.get("AWS_SESSION_TOKEN")
    if endpoint := opts.get("AWS_ENDPOINT_URL"):
        scheme, _, host = endpoint.partition("://")
        kw.update(scheme=scheme, endpoint_override=host.rstrip("/"))
    return pa_fs.SubTreeFileSystem(uri.split("://", 1)[1], pa_fs.S3FileSystem(**kw))


def partition_dataset(out: str, name: str, date: str, version: int):  # noqa: ANN201
    """The pyarrow dataset of one date in one table version: that date's files alone (the log's
    partition values prune the others before any file is opened), the `date` column included."""
    dt = delta.open_table(out, name, version)
    if dt is None:
        raise FatalError(f"no Delta table at {delta.table_uri(out, name)}")
    pruning = f"{delta.PARTITION} = '{check_date(date, 'date')}'"
    return dt.to_pyarrow_dataset(
        filesystem=arrow_filesystem(delta.table_uri(out, name)), file_pruning_predicate=pruning
    )


def read_version(out: str, name: str, date: str, version: int):  # noqa: ANN201
    """Rows of one date in one table version (the `date` column included)."""
    return partition_dataset(out, name, date, version).to_table()
