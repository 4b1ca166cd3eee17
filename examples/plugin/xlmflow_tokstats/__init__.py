"""An xlmflow processor outside the core: whitespace token counts.

Adds the column `n_tokens` to every document and writes the dataset `token_stats`: per batch and
language (the `lang` column of a `lid` instance earlier in the run, else "und"), the number of
documents and of tokens. Sum `documents` and `tokens` by `lang` for the partition's totals.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from xlmflow.processors import BatchOutput, Options, Processor

TOKEN_STATS = pa.schema(
    [("instance", pa.string()), ("lang", pa.string()), ("documents", pa.int64()), ("tokens", pa.int64())]
)


class TokenStatsOptions(Options):
    min_chars: int = Field(
        default=1, ge=1, description="Whitespace tokens shorter than this are not counted."
    )


class TokenStats(Processor):
    """Whitespace token counts per document (column n_tokens) and per language (dataset token_stats)."""

    name = "tokstats"
    version = "1"
    Options = TokenStatsOptions
    columns = pa.schema([("n_tokens", pa.int32())])
    datasets = {"token_stats": TOKEN_STATS}

    def finish(self, batch: pa.Table, prepared: pa.Table, inferred: pa.Table) -> BatchOutput:
        words = pc.utf8_split_whitespace(batch["text"])
        flat = pc.list_flatten(words)
        keep = pc.greater_equal(pc.utf8_length(flat), self.options.min_chars)
        parents = pc.list_parent_indices(words)
        counts = [0] * batch.num_rows
        for parent, kept in zip(parents.to_pylist(), keep.to_pylist(), strict=True):
            counts[parent] += bool(kept)
        n_tokens = pa.array(counts, pa.int32())
        lang = batch["lang"] if "lang" in batch.column_names else pa.array(["und"] * batch.num_rows)
        per_lang = (
            pa.table({"lang": pc.fill_null(lang, "und"), "n": n_tokens.cast(pa.int64())})
            .group_by("lang")
            .aggregate([("n", "count"), ("n", "sum")])
        )
        stats = pa.table(
            {
                "lang": per_lang["lang"],
                "documents": per_lang["n_count"].cast(pa.int64()),
                "tokens": per_lang["n_sum"].cast(pa.int64()),
            }
        )
        return BatchOutput(columns={"n_tokens": n_tokens}, datasets={"token_stats": stats})
