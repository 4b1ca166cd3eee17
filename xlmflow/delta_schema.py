"""The schema of a dataset's Delta table: created from the first files written, then evolved only by
adding nullable columns (readers of older versions and other engines rely on the columns they know).
Field metadata (a vector's width) stays in the files: the table's columns are types alone.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from xlmflow import delta
from xlmflow.errors import ConfigError


def table_schema(file_schema) -> Any:  # noqa: ANN001
    """The Delta schema of a dataset: its file columns plus `date`. Field metadata (a vector's width)
    stays in the files: the table's columns are types alone, as every engine writes them."""
    # lazy: deltalake loads its Rust library; only table reads and commits need it
    from deltalake import Schema

    fields = [f.remove_metadata() for f in file_schema if f.name != delta.PARTITION]
    fields.append(pa.field(delta.PARTITION, pa.string()))
    return Schema.from_arrow(pa.schema(fields))


def file_schema(dt):  # noqa: ANN001, ANN201
    """The pyarrow schema of a table's data files (its columns but `date`)."""
    schema = pa.schema(dt.schema().to_arrow())
    return pa.schema([f for f in schema if f.name != delta.PARTITION])


def _type(field) -> str:  # noqa: ANN001
    return json.dumps(json.loads(field.to_json())["type"], sort_keys=True)


def ensure_table(out: str, name: str, file_schema):  # noqa: ANN001, ANN201
    """Create the table if it is missing; add the nullable columns this run writes and it lacks;
    returns the table at its latest version. A nullable column of the table that this run's files lack
    (the processor that adds it is not in this run) reads as null in them.

    Anything else that differs (a column retyped, a required column added or left out) is refused:
    readers of older versions and other engines rely on the columns they know.
    """
    # lazy: deltalake loads its Rust library; only table reads and commits need it
    from deltalake import DeltaTable

    want = table_schema(file_schema)
    uri = delta.table_uri(out, name)
    opts = delta.storage_options(uri)
    dt = delta.open_table(out, name)
    if dt is None:
        try:
            return DeltaTable.create(
                uri,
                want,
                partition_by=[delta.PARTITION],
                mode="error",
                storage_options=opts,
                configuration=delta.TABLE_CONFIG,
                post_commithook_properties=delta.no_hooks(),
            )
        except Exception:  # noqa: BLE001 - another run may have created it at the same moment
            dt = delta.open_table(out, name)
            if dt is None:
                raise
    have = {f.name: f for f in dt.schema().fields}
    if dt.metadata().partition_columns != [delta.PARTITION]:
        raise ConfigError(f"{uri} is a Delta table not partitioned by {delta.PARTITION!r}; use another --out")
    wanted = {f.name: f for f in want.fields}
    # a nullable column this run does not write (its processor is not in the run) reads as null
    problems = [
        f"required column {c!r} is missing" for c, f in have.items() if c not in wanted and not f.nullable
    ]
    problems += [
        f"column {c!r} is {_type(have[c])} in the table, {_type(f)} in this run"
        for c, f in wanted.items()
        if c in have and _type(have[c]) != _type(f)
    ]
    problems += [
        f"new column {c!r} is not nullable" for c, f in wanted.items() if c not in have and not f.nullable
    ]
    if problems:
        raise ConfigError(
            f"the schema of table {uri} cannot change this way: {'; '.join(problems)}. Tables only gain "
            "nullable columns; write to a new --out (or a new table name) for other changes"
        )
    new = [f for c, f in wanted.items() if c not in have]
    if new:
        dt.alter.add_columns(new, post_commithook_properties=delta.no_hooks())
    return dt
