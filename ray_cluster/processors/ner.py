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

from typing import TYPE_CHECKING

from ray_cluster.processors.base import BatchOutput, Processor, register

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np
    import pyarrow as pa

    from ray_cluster.engine import DocTokens, Engine


def _softmax_head(out, mask, rows):  # noqa: ANN001, ANN202 - torch types, imported lazily
    import torch

    return torch.softmax(out.logits.float(), dim=-1)


def predict_entities(engine: Engine, texts: Sequence[str], strategy: str = "simple") -> list[list[dict]]:
    """Per text: entities {start, end, text, label, score} in text order."""
    import numpy as np

    id2label = {int(k): v for k, v in engine.model.config.id2label.items()}
    n_labels = len(id2label)
    bare_id = engine.tokenizer.convert_tokens_to_ids("▁")
    bare_id = None if bare_id == engine.tokenizer.unk_token_id else bare_id
    out: list[list[dict]] = [[] for _ in texts]
    for off, docs in engine.iter_tokenized(texts):
        wins = engine.windows(docs)
        scores = engine.run([w.input_ids for w in wins], _softmax_head)
        probs = [np.zeros((len(d.ids), n_labels), dtype=np.float32) for d in docs]
        for w, (p,) in zip(wins, scores, strict=True):
            probs[w.doc][w.own_start : w.own_end] = p[w.own_slice()]
        for i, doc in enumerate(docs):
            out[off + i] = aggregate(texts[off + i] or "", doc, probs[i], strategy, id2label, bare_id)
    return out


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


@register
class NerProcessor(Processor):
    name = "ner"
    batch_rows = 1_000_000  # the whole shard at once, so length sorting and batching pay off

    def setup(self, device: str) -> None:
        from ray_cluster.engine import Engine
        from ray_cluster.models import load_model

        s = self.settings
        lm = load_model(s.ner_model, "ner", s)
        self.engine = Engine(lm, device, max_batch_tokens=s.max_batch_tokens, stride=s.stride)

    def model_info(self) -> dict:
        return dict(self.engine.lm.info)

    def process_batch(self, batch: pa.Table) -> BatchOutput:
        import pyarrow as pa

        from xlmflow.schemas import ENTITIES

        texts = batch["text"].to_pylist()
        ents = predict_entities(self.engine, texts, self.settings.ner_aggregation)
        cols: dict[str, list] = {f.name: [] for f in ENTITIES}
        name = self.engine.lm.name
        for doc_id, doc_ents in zip(batch["doc_id"].to_pylist(), ents, strict=True):
            for e in doc_ents:
                cols["doc_id"].append(doc_id)
                for k in ("start", "end", "text", "label", "score"):
                    cols[k].append(e[k])
                cols["model"].append(name)
        return BatchOutput(datasets={"entities": pa.Table.from_pydict(cols, schema=ENTITIES)})
