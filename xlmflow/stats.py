"""Delta's per-file statistics (the `stats` JSON of an add action) from a Parquet file's footer.

numRecords, and per column minValues, maxValues and nullCount, nested as the columns' structs are, so
that engines reading the log (delta-rs, Spark, Trino, DuckDB) skip the files a filter excludes. Columns
inside lists and maps get none (as with Delta's own writers); a value that cannot be a safe bound
(a long string's max, a non-finite float) is left out, and a reader then keeps the file.
"""

from __future__ import annotations

import datetime as dt
import json
import math

import pyarrow as pa

STATS_PREFIX_CHARS = 32  # string statistics are cut to this prefix, as Delta's own writers do


def _stat(v, is_max: bool):  # noqa: ANN001, ANN202
    """One min or max in the form of Delta's stats JSON; None where the value is left out (a reader
    then keeps the file): booleans, bytes, non-finite floats, a max string that would need cutting."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, str):
        if len(v) <= STATS_PREFIX_CHARS:
            return v
        return None if is_max else v[:STATS_PREFIX_CHARS]  # a prefix is still a lower bound
    if isinstance(v, dt.datetime):
        # milliseconds, as Delta writes them: the min rounded down and the max up stay bounds
        ms = v.replace(microsecond=v.microsecond - v.microsecond % 1000)
        v = ms + dt.timedelta(milliseconds=1) if is_max and ms != v else ms
        if v.tzinfo is not None:
            return v.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        return v.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
    if isinstance(v, dt.date):
        return v.isoformat()
    return None


def _put(tree: dict, path: tuple, value) -> None:  # noqa: ANN001
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _leaves(schema) -> dict[str, tuple]:  # noqa: ANN001
    """Columns that get statistics, by their Parquet path: every column outside lists and maps (the
    fields of structs included, which Delta nests), as a path of field names."""
    found: dict[str, tuple] = {}

    def walk(fields, prefix: tuple) -> None:  # noqa: ANN001
        for f in fields:
            if pa.types.is_struct(f.type):
                walk(list(f.type), (*prefix, f.name))
            elif not pa.types.is_nested(f.type):
                found[".".join((*prefix, f.name))] = (*prefix, f.name)

    walk(list(schema), ())
    return found


def file_stats(metadata, schema, nan_columns=()) -> str:  # noqa: ANN001
    """Delta's stats JSON of a Parquet file, from its footer (`metadata`, a pyarrow FileMetaData) and
    arrow `schema`: numRecords, and minValues, maxValues and nullCount per column, so that engines
    skip files on a filter (`lang = 'deu_Latn'`, a `doc_id` range). No data is read.

    `nan_columns`: float columns holding NaN, which get no bounds: Parquet's min/max leave NaN out,
    while Spark orders NaN above every number, so `score > x` could skip a file with NaN rows."""
    leaves = _leaves(schema)
    mins: dict[str, object] = {}
    maxs: dict[str, object] = {}
    nulls: dict[str, int | None] = {}
    no_bounds: set[str] = set(nan_columns)
    for i in range(metadata.num_row_groups):
        rg = metadata.row_group(i)
        for j in range(rg.num_columns):
            col = rg.column(j)
            key = col.path_in_schema
            if key not in leaves:
                continue
            st = col.statistics
            if st is None or not st.has_null_count:
                nulls[key] = None
            elif nulls.get(key, 0) is not None:
                nulls[key] = nulls.get(key, 0) + st.null_count
            if st is not None and st.has_min_max:
                mins[key] = st.min if key not in mins else min(mins[key], st.min)
                maxs[key] = st.max if key not in maxs else max(maxs[key], st.max)
            elif st is None or st.null_count != rg.num_rows:  # values without bounds
                no_bounds.add(key)
    stats: dict = {"numRecords": metadata.num_rows, "minValues": {}, "maxValues": {}, "nullCount": {}}
    for key, path in leaves.items():
        if nulls.get(key) is not None:
            _put(stats["nullCount"], path, nulls[key])
        if key in no_bounds:
            continue
        for name, seen, is_max in (("minValues", mins, False), ("maxValues", maxs, True)):
            if key in seen and (v := _stat(seen[key], is_max)) is not None:
                _put(stats[name], path, v)
    return json.dumps(stats, separators=(",", ":"))


def stats_of_action(row: dict) -> str | None:
    """The stats JSON of an add action as `get_add_actions(flatten=False)` returns it."""

    def clean(tree, is_max: bool | None):  # noqa: ANN001, ANN202
        if isinstance(tree, dict):
            kept = {k: c for k, v in tree.items() if (c := clean(v, is_max)) is not None}
            return kept or None
        return tree if is_max is None else _stat(tree, is_max)

    if row.get("num_records") is None:
        return None
    stats: dict = {"numRecords": row["num_records"]}
    for name, key, is_max in (
        ("minValues", "min", False),
        ("maxValues", "max", True),
        ("nullCount", "null_count", None),
    ):
        stats[name] = clean(row.get(key) or {}, is_max) or {}
    return json.dumps(stats, separators=(",", ":"))
