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

import pyarrow as pa
from pydantic import Field

from ray_cluster.models import TINY_NER_LABELS
from ray_cluster.processors.base import BatchOutput, ModelOptions, ModelProcessor
from xlmflow.schemas import ENTITIES

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np

    from ray_cluster.engine import DocTokens, Engine


def _softmax_head(out, mask, rows):  # noqa: ANN001, ANN202 - torch types, imported lazily
    import torch

    return torch.softmax(out.logits.float(), dim=-1)


def prepare_windows(engine: Engine, texts: Sequence[str]) -> tuple[list[DocTokens], list]:
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
    import numpy as np

    id2label = {int(k): v for k, v in engine.model.config.id2label.items()}
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
    docs, wins = prepare_windows(engine, texts)
    return finish_entities(engine, texts, docs, wins, window_probs(engine, wins), strategy)


def aggregate(
    text: str, doc: DocTokens, probs: np.ndarray, strategy: str, id2label: dict, bare_id: int | None = None
) -> list[dict]:
    """Token probabilities of one document -> entities, with HF's grouping rules.

    `bare_id` is the id of the bare word-start token ("▁" in XLM-R), whose offset covers the first
    character of the following token; we give it an empty span so that an entity made of it alone is
    dropped instead of overlapping the next word's entity.
    """
    import numpy as np

    if not len(doc.ids):
        return []
    units = []  # (label, score, start, end) per token (simple) or per word
    if strategy == "simple":
        best = probs.argmax(axis=1)
        for t, k in enumerate(best):
            s, e = doc.offsets[t]
            if (
                doc.ids[t] == bare_id
            ):  # a bare "▁" has no text of its own; its offset points into the next word
                e = s
            units.append((id2label[int(k)], float(probs[t, k]), s, e))
    else:
        for first, last in _words(doc.word_ids):
            p = probs[first : last + 1]
            if strategy == "first":
                s = p[0]
            elif strategy == "max":
                s = p[int(p.max(axis=1).argmax())]
            elif strategy == "average":
                s = np.nanmean(p, axis=0)
            else:
                raise ValueError(f"unknown aggregation strategy {strategy!r}")
            k = int(s.argmax())
            units.append((id2label[k], float(s[k]), doc.offsets[first][0], doc.offsets[last][1]))
    ents = []
    for label, score, start, end in _group(units):
        if label == "O":
            continue
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if start < end:
            ents.append({"start": start, "end": end, "text": text[start:end], "label": label, "score": score})
    return ents


def _words(word_ids: list[int | None]) -> list[tuple[int, int]]:
    """(first, last) token index of each word, from the fast tokenizer's word_ids."""
    spans: list[tuple[int, int]] = []
    prev = object()
    for t, w in enumerate(word_ids):
        if w is not None and w == prev:
            spans[-1] = (spans[-1][0], t)
        else:
            spans.append((t, t))
        prev = w
    return spans


def _tag(label: str) -> tuple[str, str]:
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label  # not B-/I- (e.g. "O"): a continuation, as HF's get_tag


def _group(units: list[tuple]) -> list[tuple[str, float, int, int]]:
    """HF's group_entities: adjacent units of one type join unless the next one is B-; score = mean."""
    groups: list[tuple[str, float, int, int]] = []
    cur: list[tuple] = []

    def close() -> None:
        tag = _tag(cur[0][0])[1]
        score = sum(u[1] for u in cur) / len(cur)
        groups.append((tag, score, cur[0][2], cur[-1][3]))

    for u in units:
        if cur:
            bi, tag = _tag(u[0])
            if tag == _tag(cur[-1][0])[1] and bi != "B":
                cur.append(u)
                continue
            close()
        cur = [u]
    if cur:
        close()
    return groups


class NerOptions(ModelOptions):
    aggregation: Literal["simple", "first", "average", "max"] = Field(
        default="simple", description="How token labels become entities (as HF's aggregation_strategy)."
    )


class NerProcessor(ModelProcessor):
    """Named entities (or acronyms: any token-classification checkpoint) as the dataset `entities`."""

    name = "ner"
    Options = NerOptions
    model_class = "AutoModelForTokenClassification"
    datasets = {"entities": ENTITIES}
    batch_rows = 1_000_000  # the whole shard at once, so length sorting and batching pay off

    @classmethod
    def tiny_config(cls) -> dict:
        labels = TINY_NER_LABELS
        return {"id2label": dict(enumerate(labels)), "label2id": {lab: i for i, lab in enumerate(labels)}}

    @classmethod
    def tiny_init(cls, model) -> None:  # noqa: ANN001
        import torch

        # the default init gives near-uniform logits; sharper logits and an "O" bias give a mix of
        # O tokens and entities, so the aggregation code has something to group
        with torch.no_grad():
            model.classifier.weight.normal_(0.0, 1.5)
            model.classifier.bias.zero_()
            model.classifier.bias[0] = 3.0

    def prepare(self, batch: pa.Table) -> tuple:
        texts = batch["text"].to_pylist()
        return (texts, *prepare_windows(self.engine, texts))

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
