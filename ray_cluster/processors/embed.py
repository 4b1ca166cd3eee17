"""Document embeddings (processor `embed`, dataset "embeddings"): pooled XLM-R states, L2-normalised.

Pooling `mean` (default): the mean of the last hidden state over the document's content tokens (special
tokens and padding excluded). A long document is windowed by the engine; in an overlap each token is
taken once, from the window that owns it (where it is furthest from a window edge), so the document
vector is the mean over all its tokens, each counted exactly once: windows are weighted by the tokens
they own. For a document that fits one window this is plain mean pooling of one forward pass.

Pooling `lawdr` — our interpretation, documented because the paper could not be read in full here.
The brief names it "layer-wise attention weighted document representation"; the paper behind
arXiv 2106.03379 is "LAWDR: Language-Agnostic Weighted Document Representations from Pre-trained
Models" (Gong et al., 2021). Only its abstract was reachable offline: it derives document vectors from
pre-trained (XLM-R) sentence representations without fine-tuning, by weighting them and using the
geometry of the embedding space. What we compute:
1. token vectors = the uniform average of the last 4 hidden layers (layer-wise pooling, with fixed equal
   weights since there is no data to learn layer attention from; the last layer alone is the one most
   shaped by the masked-LM objective);
2. a vector per window (the document's ~510-token segments) = the mean of the token vectors it owns;
3. the document vector = the windows' vectors weighted by the number of tokens each owns, L2-normalised.
Not done: the paper's language-agnostic step (removing language-specific directions) needs per-language
statistics over a corpus; computing them per shard would make a document's vector depend on which
other documents share its shard. Users can centre per language downstream (join on doc_id for `lang`).

`embed_texts` runs the three phases in a row (tests, benchmarks); the QE cosine method runs them as its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from xlmflow.ray_cluster.processors.base import BatchOutput, Dataset, ModelOptions, ModelProcessor
from xlmflow.schemas import WIDTH_KEY

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np

    from xlmflow.ray_cluster.engine import Engine

LAWDR_LAYERS = 4


def embeddings_schema(dim: int) -> pa.Schema:
    """OUT/embeddings/date=D/: the vector's width (the model's) is declared for the writer's check."""
    return pa.schema(
        [
            ("doc_id", pa.string()),
            ("instance", pa.string()),
            pa.field("embedding", pa.list_(pa.float32()), metadata={WIDTH_KEY: str(dim).encode()}),
            ("model", pa.string()),
            ("pooling", pa.string()),
        ]
    )


def embedding_windows(engine: Engine, texts: Sequence[str]) -> list:
    """The CPU phase: windows over one tokenization of each text."""
    return engine.windows(engine.tokenize([t or "" for t in texts]))


def pooled_windows(engine: Engine, wins: list, pooling: str = "mean") -> list:
    """The device phase: per window, (sum of the token vectors it owns, their count)."""
    # lazy: torch takes seconds to import; only actors and model commands need it
    import torch

    if pooling not in ("mean", "lawdr"):
        raise ValueError(f"unknown pooling {pooling!r}; choose mean or lawdr")

    def head(out, mask, rows):  # noqa: ANN001, ANN202
        if pooling == "lawdr":
            h = torch.stack([x.float() for x in out.hidden_states[-LAWDR_LAYERS:]]).mean(0)
        else:
            h = out.last_hidden_state.float()
        own = torch.zeros(mask.shape, dtype=h.dtype)
        for j, r in enumerate(rows):
            sl = wins[r].own_slice()
            if sl.start < sl.stop:
                own[j, sl] = 1.0
            elif wins[r].end == wins[r].start:  # an empty text: pool its special tokens
                own[j] = mask[j].to("cpu", h.dtype)
        own = own.to(h.device)
        return (own.unsqueeze(-1) * h).sum(1), own.sum(1)

    kw = {"output_hidden_states": True} if pooling == "lawdr" else {}
    return engine.run([w.input_ids for w in wins], head, **kw)


def document_vectors(n_docs: int, dim: int, wins: list, pooled: list) -> np.ndarray:
    """The CPU phase after the model: windows weighted by the tokens they own, L2-normalised."""
    sums = np.zeros((n_docs, dim), dtype=np.float64)
    counts = np.zeros(n_docs, dtype=np.float64)
    for w, (vec, n) in zip(wins, pooled, strict=True):
        sums[w.doc] += vec
        counts[w.doc] += n
    means = sums / np.maximum(counts, 1.0)[:, None]
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    return (means / np.maximum(norms, 1e-12)).astype(np.float32)


def embed_texts(engine: Engine, texts: Sequence[str], pooling: str = "mean") -> np.ndarray:
    """L2-normalised document vectors, float32 [len(texts), hidden] (the three phases in a row)."""
    wins = embedding_windows(engine, texts)
    pooled = pooled_windows(engine, wins, pooling)
    return document_vectors(len(texts), engine.config.hidden_size, wins, pooled)


class EmbedOptions(ModelOptions):
    pooling: Literal["mean", "lawdr"] = Field(default="mean", description="How token states become a vector.")


class EmbedProcessor(ModelProcessor):
    """Document embeddings as the dataset `embeddings`."""

    name = "embed"
    Options = EmbedOptions
    model_class = "AutoModel"
    datasets = {"embeddings": Dataset(None)}  # its vector width is the model's: known once it is loaded

    def dataset_schema(self, name: str) -> pa.Schema:
        return embeddings_schema(self.engine.config.hidden_size)

    def prepare(self, batch: pa.Table) -> list:
        return embedding_windows(self.engine, batch["text"].to_pylist())

    def infer(self, prepared: list) -> list:
        return pooled_windows(self.engine, prepared, self.options.pooling)

    def finish(self, batch: pa.Table, prepared: list, inferred: list) -> BatchOutput:
        dim = self.engine.config.hidden_size
        vecs = document_vectors(batch.num_rows, dim, prepared, inferred)
        n = batch.num_rows
        table = pa.table(
            {
                "doc_id": batch["doc_id"].combine_chunks().cast(pa.string()),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1), pa.float32()), dim),
                "model": pa.array([self.engine.lm.name] * n, pa.string()),
                "pooling": pa.array([self.options.pooling] * n, pa.string()),
            }
        )
        return BatchOutput(datasets={"embeddings": table})
