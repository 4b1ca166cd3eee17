"""Named entities (processor `ner`, dataset "entities"): token classification over whole documents.

Semantics follow transformers' TokenClassificationPipeline (`simple|first|average|max`), with two
deliberate differences:
- words for first/average/max come from the fast tokenizer's `word_ids()` (HF falls back to a whitespace
  heuristic for XLM-R, which splits words wrongly: transformers #11887, #12593);
- spans are trimmed of surrounding whitespace (XLM-R tokens carry their leading space, so HF's spans
  start one character early); an entity that is only whitespace is dropped;
- the bare word-start token "▁" (XLM-R emits it before e.g. CJK or Devanagari word pieces) gets an
  empty span: its offset covers the first character of the next token, so HF can emit a one-character
  entity overlapping the next one; ours is dropped (or, inside a group, adds no characters).
Long documents are windowed by the engine; the token scores of all windows are merged first (each token
from the window where it is furthest from an edge), then aggregated once over the whole document, so
entities are never duplicated or overlapping across windows and a word cut by a window edge stays whole.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from xlmflow.ray_cluster.models import TINY_NER_LABELS
from xlmflow.ray_cluster.processors.base import (
    BatchOutput,
    Dataset,
    LabelCounts,
    ModelOptions,
    ModelProcessor,
)
from xlmflow.schemas import columns

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np

    from xlmflow.ray_cluster.engine import DocTokens, Engine


# OUT/entities/date=D/: one row per entity; `instance` names the instance that found it (a run may
# have several of type ner, e.g. `entities` and `acronyms`)
ENTITIES = columns(
    "doc_id string, instance string, start int32, end int32, text string, label string, score float32, model string"
)


def _softmax_head(out, mask, rows):  # noqa: ANN001, ANN202 - torch types, imported lazily
    # lazy: torch takes seconds to import; only actors and model commands need it
    import torch

    return torch.softmax(out.logits.float(), dim=-1)


def tokens_and_windows(engine: Engine, texts: Sequence[str]) -> tuple[list[DocTokens], list]:
    """The CPU phase: one tokenization of each text and its windows."""
    docs = engine.tokenize([t or "" for t in texts])
    return docs, engine.windows(docs)


def window_probs(engine: Engine, wins: list) -> list:
    """The device phase: per window, token label probabilities (float32 numpy [tokens, labels])."""
    return [p for (p,) in engine.run([w.input_ids for w in wins], _softmax_head)]


def finish_entities(
    engine: Engine, texts: Sequence[str], docs: list[DocTokens], wins: list, scores: list, strategy: str
) -> list[list[dict]]:
    """The CPU phase after the model: merge the windows' token scores, aggregate into entities."""
    id2label = {int(k): v for k, v in engine.config.id2label.items()}
    bare_id = engine.tokenizer.convert_tokens_to_ids("▁")
    bare_id = None if bare_id == engine.tokenizer.unk_token_id else bare_id
    probs = [np.zeros((len(d.ids), len(id2label)), dtype=np.float32) for d in docs]
    for w, p in zip(wins, scores, strict=True):
        probs[w.doc][w.own_start : w.own_end] = p[w.own_slice()]
    return [
        aggregate(texts[i] or "", doc, probs[i], strategy, id2label, bare_id) for i, doc in enumerate(docs)
    ]


def predict_entities(engine: Engine, texts: Sequence[str], strategy: str = "simple") -> list[list[dict]]:
    """Per text: entities {start, end, text, label, score} in text order (the three phases in a row)."""
    docs, wins = tokens_and_windows(engine, texts)
    return finish_entities(engine, texts, docs, wins, window_probs(engine, wins), strategy)


def aggregate(
    text: str, doc: DocTokens, probs: np.ndarray, strategy: str, id2label: dict, bare_id: int | None = None
) -> list[dict]:
    """Token probabilities of one document -> entities, with HF's grouping rules, in numpy over the
    document's tokens (Python runs once per entity, not per token).

    `bare_id` is the id of the bare word-start token ("▁" in XLM-R), whose offset covers the first
    character of the following token; we give it an empty span so that an entity made of it alone is
    dropped instead of overlapping the next word's entity.
    """
    n = len(doc.ids)
    if not n:
        return []
    offsets = np.asarray(doc.offsets, dtype=np.int64).reshape(n, 2)
    if strategy == "simple":  # units are tokens
        scores, starts, ends = probs, offsets[:, 0], offsets[:, 1].copy()
        if bare_id is not None:  # a bare "▁" has no text of its own; its offset points into the next word
            bare = np.asarray(doc.ids) == bare_id
            ends[bare] = starts[bare]
    else:  # units are words
        first, last = _words(doc.word_ids)
        if strategy == "first":
            scores = probs[first]
        elif strategy == "average":
            scores = np.add.reduceat(probs, first, axis=0) / (last - first + 1)[:, None]
        elif strategy == "max":  # the word's token with the highest probability, the first on ties
            top = probs.max(axis=1)
            word = np.repeat(np.arange(len(first)), last - first + 1)
            at_max = np.flatnonzero(top == np.maximum.reduceat(top, first)[word])
            _, pick = np.unique(word[at_max], return_index=True)
            scores = probs[at_max[pick]]
        else:
            raise ValueError(f"unknown aggregation strategy {strategy!r}")
        starts, ends = offsets[first, 0], offsets[last, 1]
    label = scores.argmax(axis=1)
    score = scores[np.arange(len(label)), label].astype(np.float64)
    ents = []
    for tag, g_score, start, end in _group(label, score, starts, ends, id2label):
        if tag == "O":
            continue
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if start < end:
            ents.append({"start": start, "end": end, "text": text[start:end], "label": tag, "score": g_score})
    return ents


def _words(word_ids: list[int | None]) -> tuple[np.ndarray, np.ndarray]:
    """First and last token index of each word, from the fast tokenizer's word_ids (a token without a
    word, None, is a word of its own)."""
    w = np.array([-1 if x is None else x for x in word_ids], dtype=np.int64)
    new = np.ones(len(w), dtype=bool)
    new[1:] = (w[1:] != w[:-1]) | (w[1:] == -1)
    first = np.flatnonzero(new)
    last = np.append(first[1:] - 1, len(w) - 1)
    return first, last


def _tag(label: str) -> tuple[str, str]:
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label  # not B-/I- (e.g. "O"): a continuation, as HF's get_tag


def _group(label, score, starts, ends, id2label: dict) -> list[tuple[str, float, int, int]]:  # noqa: ANN001
    """HF's group_entities: adjacent units of one type join unless the next one is B-; score = mean."""
    tags = [_tag(id2label[k]) for k in range(len(id2label))]
    kinds = sorted({t for _, t in tags})
    kind = np.array([kinds.index(t) for _, t in tags])[label]
    is_b = np.array([b == "B" for b, _ in tags])[label]
    new = np.ones(len(label), dtype=bool)
    new[1:] = (kind[1:] != kind[:-1]) | is_b[1:]
    first = np.flatnonzero(new)
    last = np.append(first[1:] - 1, len(label) - 1)
    mean = np.add.reduceat(score, first) / (last - first + 1)
    return [
        (kinds[kind[f]], float(m), int(starts[f]), int(ends[e]))
        for f, e, m in zip(first, last, mean, strict=True)
    ]


class NerOptions(ModelOptions):
    aggregation: Literal["simple", "first", "average", "max"] = Field(
        default="simple", description="How token labels become entities (as HF's aggregation_strategy)."
    )


class NerProcessor(ModelProcessor):
    """Named entities (or acronyms: any token-classification checkpoint) as the dataset `entities`."""

    name = "ner"
    model_class = "AutoModelForTokenClassification"  # any token-classification head
    Options = NerOptions
    datasets = {"entities": Dataset(ENTITIES, (LabelCounts(),))}  # the report's rows per label

    tiny_labels = TINY_NER_LABELS

    @classmethod
    def tiny_init(cls, model) -> None:  # noqa: ANN001
        # lazy: torch takes seconds to import; only actors and model commands need it
        import torch

        # the default init gives near-uniform logits; sharper logits and an "O" bias give a mix of
        # O tokens and entities, so the aggregation code has something to group
        with torch.no_grad():
            model.classifier.weight.normal_(0.0, 1.5)
            model.classifier.bias.zero_()
            model.classifier.bias[0] = 3.0

    def prepare(self, batch: pa.Table) -> tuple:
        texts = batch["text"].to_pylist()
        return (texts, *tokens_and_windows(self.engine, texts))

    def infer(self, prepared: tuple) -> list:
        return window_probs(self.engine, prepared[2])

    def finish(self, batch: pa.Table, prepared: tuple, inferred: list) -> BatchOutput:
        texts, docs, wins = prepared
        ents = finish_entities(self.engine, texts, docs, wins, inferred, self.options.aggregation)
        cols: dict[str, list] = {f.name: [] for f in ENTITIES if f.name != "instance"}
        name = self.engine.lm.name
        for doc_id, doc_ents in zip(batch["doc_id"].to_pylist(), ents, strict=True):
            for e in doc_ents:
                cols["doc_id"].append(doc_id)
                for k in ("start", "end", "text", "label", "score"):
                    cols[k].append(e[k])
                cols["model"].append(name)
        schema = pa.schema([f for f in ENTITIES if f.name != "instance"])
        return BatchOutput(datasets={"entities": pa.Table.from_pydict(cols, schema=schema)})
