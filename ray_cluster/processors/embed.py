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

`embed_texts` is the reusable entry point (the QE bi-encoder cosine method calls it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ray_cluster.processors.base import BatchOutput, Processor, register

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np
    import pyarrow as pa

    from ray_cluster.engine import Engine

LAWDR_LAYERS = 4


def embed_texts(engine: Engine, texts: Sequence[str], pooling: str = "mean") -> np.ndarray:
    """L2-normalised document vectors, float32 [len(texts), hidden]."""
    import numpy as np
    import torch

    if pooling not in ("mean", "lawdr"):
        raise ValueError(f"unknown pooling {pooling!r}; choose mean or lawdr")
    dim = engine.model.config.hidden_size
    sums = np.zeros((len(texts), dim), dtype=np.float64)
    counts = np.zeros(len(texts), dtype=np.float64)
    for off, docs in engine.iter_tokenized(texts):
        wins = engine.windows(docs)

        def head(out, mask, rows, wins=wins):  # noqa: ANN001, ANN202
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
        for w, (vec, n) in zip(wins, engine.run([w.input_ids for w in wins], head, **kw), strict=True):
            sums[off + w.doc] += vec
            counts[off + w.doc] += n
    means = sums / np.maximum(counts, 1.0)[:, None]
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    return (means / np.maximum(norms, 1e-12)).astype(np.float32)


@register
class EmbedProcessor(Processor):
    name = "embed"
    batch_rows = 1_000_000  # the whole shard at once, so length sorting and batching pay off

    def setup(self, device: str) -> None:
        from ray_cluster.engine import Engine
        from ray_cluster.models import load_model

        s = self.settings
        lm = load_model(s.embed_model, "embed", s)
        self.engine = Engine(lm, device, max_batch_tokens=s.max_batch_tokens, stride=s.stride)

    def model_info(self) -> dict:
        return dict(self.engine.lm.info)

    def process_batch(self, batch: pa.Table) -> BatchOutput:
        import pyarrow as pa

        from xlmflow.schemas import embeddings_schema

        vecs = embed_texts(self.engine, batch["text"].to_pylist(), self.settings.embed_pooling)
        dim = vecs.shape[1]
        schema = embeddings_schema(dim)
        n = batch.num_rows
        table = pa.Table.from_arrays(
            [
                batch["doc_id"].combine_chunks().cast(pa.string()),
                pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1), pa.float32()), dim),
                pa.array([self.engine.lm.name] * n, pa.string()),
                pa.array([self.settings.embed_pooling] * n, pa.string()),
            ],
            schema=schema,
        )
        return BatchOutput(datasets={"embeddings": table})
