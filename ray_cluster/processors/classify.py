"""Document classification (processor `classify`, dataset `classifications`): any XLM-R family
`AutoModelForSequenceClassification` checkpoint — cross-lingual sentiment, topic, offensive content.

What the scores are comes from the checkpoint's config, as in transformers' text-classification pipeline:
- single-label (`problem_type` single_label_classification, or unset with several labels): softmax over
  the labels; `label` is the top one, `labels` is `[label]`;
- multi-label (`problem_type` multi_label_classification): a sigmoid per label; `label` is the top one,
  `labels` every label scoring at least `threshold` (possibly none);
- regression (`problem_type` regression, one output): the raw output as `score`, `label` "score",
  `labels` empty. A one-output checkpoint without `problem_type: regression` is refused: the pipeline
  would put a sigmoid over it, which is seldom what its training meant.
`scores` holds every label with its score, best first (the pipeline's `top_k=None` order).

A document longer than one model window is never truncated: every window (with `stride` tokens of
overlap) is classified and the windows' logits are combined before the softmax/sigmoid — by default a
mean weighted by the tokens each window owns (each token counted once, see ray_cluster.engine), or the
element-wise maximum (`combine: max`: "is any part of the document X"). A one-window document gets
exactly the pipeline's scores.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from xlmflow.errors import ConfigError
from xlmflow.ray_cluster.processors.base import (
    BatchOutput,
    Dataset,
    LabelCounts,
    ModelOptions,
    ModelProcessor,
)

# OUT/classifications/date=D/: one row per document and classify instance
CLASSIFICATIONS = pa.schema(
    [
        ("doc_id", pa.string()),
        ("instance", pa.string()),
        ("label", pa.string()),
        ("score", pa.float32()),
        ("scores", pa.list_(pa.struct([("label", pa.string()), ("score", pa.float32())]))),
        ("labels", pa.list_(pa.string())),
        ("model", pa.string()),
    ]
)
TINY_LABELS = ["negative", "neutral", "positive"]


class ClassifyOptions(ModelOptions):
    threshold: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Multi-label checkpoints: labels scoring at least this are in `labels`.",
    )
    combine: Literal["mean", "max"] = Field(
        default="mean",
        description="How the logits of a long document's windows combine: mean weighted by the tokens each "
        "window owns, or the element-wise max.",
    )


class ClassifyProcessor(ModelProcessor):
    """Sequence classification of every document (sentiment, topics, ...) as the dataset `classifications`."""

    name = "classify"
    Options = ClassifyOptions
    model_class = "AutoModelForSequenceClassification"
    datasets = {"classifications": Dataset(CLASSIFICATIONS, (LabelCounts(),))}  # the report's rows per label

    tiny_labels = TINY_LABELS

    @classmethod
    def tiny_config(cls) -> dict:
        return {**super().tiny_config(), "problem_type": "single_label_classification"}

    def check_model(self, lm: Any) -> None:
        cfg = lm.config
        self.problem = cfg.problem_type or ("single_label_classification" if cfg.num_labels > 1 else None)
        if cfg.num_labels == 1 and self.problem != "regression":
            raise ConfigError(
                f"classify model {self.options.model!r} has one output but its config does not say "
                "`problem_type: regression`; set it in the checkpoint's config.json if the output is a "
                "score, or use a checkpoint with one output per label"
            )
        self.id2label = {int(k): str(v) for k, v in cfg.id2label.items()}

    def prepare(self, batch: pa.Table) -> list:
        texts = [t or "" for t in batch["text"].to_pylist()]
        return self.engine.windows(self.engine.tokenize(texts))

    def infer(self, prepared: list) -> list:
        return [out for (out,) in self.engine.run([w.input_ids for w in prepared], _logits)]

    def finish(self, batch: pa.Table, prepared: list, inferred: list) -> BatchOutput:
        n = batch.num_rows
        logits = combine_windows(n, prepared, inferred, self.options.combine)
        if self.problem == "regression":
            probs = logits
        elif self.problem == "multi_label_classification":
            probs = 1.0 / (1.0 + np.exp(-logits))
        else:
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs = shifted / shifted.sum(axis=1, keepdims=True)
        names = [self.id2label.get(i, f"LABEL_{i}") for i in range(probs.shape[1])]
        order = np.argsort(-probs, axis=1, kind="stable")
        top = order[:, 0]
        label = ["score"] * n if self.problem == "regression" else [names[k] for k in top]
        scores = [[{"label": names[k], "score": float(probs[i, k])} for k in order[i]] for i in range(n)]
        if self.problem == "multi_label_classification":
            t = self.options.threshold
            labels = [[names[k] for k in order[i] if probs[i, k] >= t] for i in range(n)]
        elif self.problem == "regression":
            labels = [[] for _ in range(n)]
        else:
            labels = [[x] for x in label]
        table = pa.table(
            {
                "doc_id": batch["doc_id"].combine_chunks().cast(pa.string()),
                "label": pa.array(label, pa.string()),
                "score": pa.array(probs[np.arange(n), top], pa.float32()),
                "scores": pa.array(scores, CLASSIFICATIONS.field("scores").type),
                "labels": pa.array(labels, pa.list_(pa.string())),
                "model": pa.array([self.engine.lm.name] * n, pa.string()),
            }
        )
        return BatchOutput(datasets={"classifications": table})


def _logits(out, mask, rows):  # noqa: ANN001, ANN202 - torch types, imported lazily
    return out.logits.float()


def combine_windows(n_docs: int, wins: list, logits: list, how: str = "mean"):  # noqa: ANN201
    """Per document, its windows' logits combined: token-weighted mean (each window weighs the tokens it
    owns; an empty document's one window weighs 1) or element-wise max. float64 [n_docs, labels]."""
    width = len(logits[0]) if logits else 0
    if how == "max":
        out = np.full((n_docs, width), -np.inf)
        for w, x in zip(wins, logits, strict=True):
            out[w.doc] = np.maximum(out[w.doc], x)
        return out
    sums = np.zeros((n_docs, width))
    weights = np.zeros(n_docs)
    for w, x in zip(wins, logits, strict=True):
        k = max(1, w.own_end - w.own_start)
        sums[w.doc] += k * np.asarray(x, dtype=np.float64)
        weights[w.doc] += k
    return sums / np.maximum(weights, 1)[:, None]
