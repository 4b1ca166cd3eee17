"""Read committed partitions: the Delta table versions their manifest pins (never half a commit).

A `--force` run commits each dataset's table and then the manifest. A reader of the manifest reads the
versions it pins, so it gets one run's tables whole, even while another run is between its first table
commit and its manifest. Superseded files are kept until `xlmflow vacuum`, so a version stays readable
for the retention period (7 days by default) after it is replaced.
"""

from __future__ import annotations

from xlmflow import delta
from xlmflow.manifest import read_manifest


def pinned_version(out: str, dataset: str, date: str) -> int | None:
    """The table version holding the committed partition of `dataset`; None when not committed."""
    m = read_manifest(out, date)
    return None if m is None else (m.get("tables") or {}).get(dataset)


def read_partition(out: str, dataset: str, date: str):  # noqa: ANN201 - pyarrow is imported lazily
    """The dataset of a committed partition as one Arrow table (None when not committed).

    Columns are the dataset's columns plus `date` (the table's partition column).
    """
    version = pinned_version(out, dataset, date)
    return None if version is None else delta.read_partition(out, dataset, date, version)
