"""The core's Arrow schemas: what ingest stages, the main record, rejects, dedup's staging.

The rule: a schema the core defines lives here; a dataset a processor writes is declared by that
processor (its module, e.g. ray_cluster.processors.ner's ENTITIES), and so are the columns it adds
to the main record (its `columns`). The main record of a run is the core's plus those columns
(ray_cluster.registry.main_schema).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc


def columns(spec: str) -> pa.Schema:
    """A schema written as "name type, name type, ..." with pyarrow's type names (string, int32, int64,
    float32, bool): one line per schema instead of one per column."""
    return pa.schema([(name, pa.type_for_alias(t)) for name, t in (c.split() for c in spec.split(","))])


# Ingest -> shards (docs mode). `meta` holds the extra input fields as a JSON object string, so every
# input format maps onto one schema without unifying arbitrary column types across files.
STAGED_DOCS = columns(
    "doc_id string, text string, lang_hint string, n_chars int32, source string, source_row int64, meta string"
)

# Ingest -> shards (pairs mode, task qe).
STAGED_PAIRS = columns(
    "pair_id string, src string, mt string, src_lang_hint string, mt_lang_hint string, source string, source_row int64, meta string"
)

# OUT/documents/date=D/: the staged columns, with the columns the run's processors declare (lid's
# `lang`, `lang_score` after `text`, others at the end: ray_cluster.registry.main_schema).
DOCUMENTS = columns(
    "doc_id string, text string, n_chars int32, source string, source_row int64, lang_hint string, meta string"
)

# OUT/pairs/date=D/: the accepted pairs (pairs mode), joinable with qe on pair_id.
PAIRS = STAGED_PAIRS

# OUT/rejects/date=D/: every input row that is not an output row, with a reason code.
REJECTS = columns("source string, source_row int64, reason string, detail string, raw string")
REJECT_RAW_CHARS = 500  # excerpt length kept in `raw`

# Reject reason of a document removed as a near copy of an earlier one (tasks.near_dedup); its detail
# names the kept document and the Jaccard estimated from the two MinHash signatures.
NEAR_DUPLICATE = "near_duplicate"

# The near_duplicates dataset: one row per document removed as a near copy. cluster_id is the input-order
# key of the cluster's kept document (unique per cluster); the kept document has no row of its own.
NEAR_DUPLICATES = columns("doc_id string, kept_id string, cluster_id int64, estimated_jaccard float32")

# A vector column's width: Delta has no fixed-size array type, so vectors are plain lists in the
# files and `array<float>` in the table (every Delta reader maps one onto the other), and the width
# declared here is what the writer checks each vector against (tasks.write).
WIDTH_KEY = b"xlmflow.width"


def file_schema(schema: pa.Schema) -> pa.Schema:
    """The schema a dataset's Parquet files are written with: fixed-size lists become lists (their width
    kept as WIDTH_KEY), so that files and table agree on one type and native Delta readers (Polars,
    DuckDB's delta_scan) accept them."""
    fields = []
    for f in schema:
        if pa.types.is_fixed_size_list(f.type):
            width = {WIDTH_KEY: str(f.type.list_size).encode()}
            f = pa.field(f.name, pa.list_(f.type.value_field), f.nullable, {**(f.metadata or {}), **width})
        fields.append(f)
    return pa.schema(fields, metadata=schema.metadata)


def check_widths(table: pa.Table, schema: pa.Schema) -> None:
    """ValueError if a vector of a column that declares a width (WIDTH_KEY) has another length."""
    for f in schema:
        width = (f.metadata or {}).get(WIDTH_KEY)
        if width is None or f.name not in table.column_names:
            continue
        lengths = pc.list_value_length(table[f.name])
        wrong = pc.sum(pc.not_equal(lengths, int(width))).as_py() or 0
        if wrong:
            who = sorted(set(table["instance"].to_pylist())) if "instance" in table.column_names else []
            raise ValueError(
                f"column {f.name}: {wrong} vectors are not {int(width)} values long, the width its "
                f"dataset declares{' (processor ' + ', '.join(map(str, who)) + ')' if who else ''}; a "
                "processor must return vectors of the width its output schema declares"
            )


def reject_raw(raw: object) -> str:
    """The excerpt of a rejected row kept in `raw`: truncated, so a huge bad line cannot bloat the
    rejects dataset, and valid UTF-8 (lone surrogates cannot be written to Arrow/Parquet)."""
    if isinstance(raw, bytes):
        raw = raw[: 4 * REJECT_RAW_CHARS + 4].decode("utf-8", errors="replace")
    raw = str(raw)
    if len(raw) > REJECT_RAW_CHARS:
        raw = raw[:REJECT_RAW_CHARS] + "…"
    return raw.encode("utf-8", errors="replace").decode("utf-8")


def make_reject(source: str, source_row: int | None, reason: str, detail: str, raw: object = "") -> dict:
    """One reject row."""
    return {
        "source": source,
        "source_row": source_row,
        "reason": reason,
        "detail": detail,
        "raw": reject_raw(raw),
    }


def rejects_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=REJECTS)


# --- ingest staging (tasks.ingest, tasks.dedup): what split tasks hand to the dedup reducers ----------
# Staged rows plus the piece they came from (source_row is still the row within the piece), the
# SHA-1 of their normalized content, and the reject excerpt should dedup reject them.
def staged_rows_schema(mode: str) -> pa.Schema:
    base = STAGED_DOCS if mode == "docs" else STAGED_PAIRS
    return (
        base.append(pa.field("_piece", pa.int32()))
        .append(pa.field("_digest", pa.binary(20)))
        .append(pa.field("_raw", pa.string()))
    )


# one row per accepted row, bucketed by id: all the id stage of dedup needs
DEDUP_KEYS = pa.schema(
    [
        ("id", pa.string()),
        ("digest", pa.binary(20)),
        ("piece", pa.int32()),
        ("row", pa.int64()),
        ("cbucket", pa.int32()),
    ]
)
# rows the id stage rejected, bucketed by content bucket
DEDUP_LOSERS = pa.schema(
    [("piece", pa.int32()), ("row", pa.int64()), ("reason", pa.string()), ("detail", pa.string())]
)
# rejects of a split task: source_row is still the row within the piece
STAGED_REJECTS = REJECTS.append(pa.field("_piece", pa.int32()))
