"""NER: same entities as transformers' pipeline, long documents past 512 tokens, the processor."""

from __future__ import annotations

import json
import warnings

import pytest

from tests.conftest import CORPUS, staged_docs
from xlmflow.ray_cluster.models import load_model
from xlmflow.ray_cluster.registry import make_settings

LANGS = ["eng_Latn", "deu_Latn", "rus_Cyrl", "arb_Arab", "cmn_Hans", "hin_Deva", "jpn_Jpan", "tha_Thai"]


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    # the session's model cache (shared with test_models/test_embed): the tiny model is built once
    return make_settings(
        inputs=("in",), out="out", model_cache=str(tmp_path_factory.getbasetemp() / "xlmflow-model-cache")
    )


@pytest.fixture(scope="module")
def lm(settings):
    return load_model("tiny", "ner", settings)


@pytest.fixture(scope="module")
def corpus():
    with open(CORPUS, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _paragraphs(corpus, ids=("udhr:a1:p1", "udhr:a3:p1", "udhr:a13:p2", "udhr:a26:p2")):
    return [(r["lang"], r["text"]) for r in corpus if r["lang"] in LANGS and r["id"] in ids]


def _pipeline(lm, strategy):
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers.pipeline(
        "token-classification", model=lm.model, tokenizer=lm.tokenizer, aggregation_strategy=strategy
    )


def _hf_entities(pipe, text, shift=0, simple=True):
    """HF's entities with surrounding whitespace trimmed (XLM-R tokens carry their leading space).

    For `simple`, HF's tokens (all of them, O included) are grouped by HF's own group_entities after
    giving the bare "▁" token an empty span, the one documented difference of ours (see ner.py).
    """
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if simple:
            tokens = pipe(text, aggregation_strategy="none", ignore_labels=[])
            for t in tokens:
                if t["word"] == "▁":
                    t["end"] = t["start"]
            found = [g for g in pipe.group_entities(tokens) if g["entity_group"] != "O"]
        else:
            found = pipe(text)
    for e in found:
        s, t = e["start"], e["end"]
        while s < t and text[s].isspace():
            s += 1
        while t > s and text[t - 1].isspace():
            t -= 1
        if s < t:
            out.append((s + shift, t + shift, e["entity_group"], float(e["score"])))
    return out


def _assert_same(ours, ref):
    assert [e[:3] for e in ours] == [e[:3] for e in ref]
    assert all(abs(a[3] - b[3]) <= 1e-4 for a, b in zip(ours, ref, strict=True))


def _ours(ents):
    return [(e["start"], e["end"], e["label"], e["score"]) for e in ents]


def test_simple_matches_the_hf_pipeline_across_scripts(lm, corpus):
    from xlmflow.ray_cluster.engine import Engine
    from xlmflow.ray_cluster.processors.ner import predict_entities

    paras = _paragraphs(corpus)
    assert {lang for lang, _ in paras} == set(LANGS)
    texts = [t for _, t in paras]
    # a small token budget: many batches of mixed lengths, results must still land on the right text
    got = predict_entities(Engine(lm, "cpu", max_batch_tokens=1024), texts, "simple")
    pipe = _pipeline(lm, "simple")
    total = 0
    for text, ents in zip(texts, got, strict=True):
        assert all(text[e["start"] : e["end"]] == e["text"] == e["text"].strip() for e in ents)
        _assert_same(_ours(ents), _hf_entities(pipe, text))
        total += len(ents)
    assert total > 50  # the tiny model predicts entities, so the comparison is not vacuous


def _hf_word_starts(tok, text):
    """HF's whitespace heuristic for word starts (used for XLM-R by first/average/max) vs word_ids."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    heuristic = [s == 0 or " " in text[s - 1 : s + 1] for s, _ in enc["offset_mapping"]]
    wids = enc.word_ids()
    by_ids = [i == 0 or wids[i] != wids[i - 1] for i in range(len(wids))]
    return heuristic, by_ids


@pytest.mark.parametrize("strategy", ["first", "average", "max"])
def test_word_strategies_match_hf_where_its_word_heuristic_is_right(lm, corpus, strategy):
    from xlmflow.ray_cluster.engine import Engine
    from xlmflow.ray_cluster.processors.ner import predict_entities

    texts = [t for _, t in _paragraphs(corpus)]
    agree = [t for t in texts if _hf_word_starts(lm.tokenizer, t)[0] == _hf_word_starts(lm.tokenizer, t)[1]]
    assert len(agree) >= 8
    got = predict_entities(Engine(lm, "cpu"), agree, strategy)
    pipe = _pipeline(lm, strategy)
    for text, ents in zip(agree, got, strict=True):
        _assert_same(_ours(ents), _hf_entities(pipe, text, simple=False))


def test_words_come_from_word_ids_not_whitespace(lm):
    """'▁' + 'einander' is one word for the tokenizer; HF's heuristic splits it in two."""
    from xlmflow.ray_cluster.engine import Engine
    from xlmflow.ray_cluster.processors.ner import predict_entities

    text = "Sie sollen einander im Geiste begegnen."
    heuristic, by_ids = _hf_word_starts(lm.tokenizer, text)
    assert heuristic != by_ids
    (ents,) = predict_entities(Engine(lm, "cpu"), [text], "first")
    (tokens,) = Engine(lm, "cpu").tokenize([text])
    word_spans = {}
    for (s, e), w in zip(tokens.offsets, tokens.word_ids, strict=True):
        a, b = word_spans.get(w, (s, e))
        word_spans[w] = (min(a, s), max(b, e))
    # every entity starts at the start of a tokenizer word and ends at the end of one
    starts = {text.index(text[a:b].strip(), a) for a, b in word_spans.values()}
    ends = {text.index(text[a:b].strip(), a) + len(text[a:b].strip()) for a, b in word_spans.values()}
    assert ents and all(e["start"] in starts and e["end"] in ends for e in ents)


def _long_doc(lm, corpus, head_tokens=510):
    """English text of exactly `head_tokens` tokens, a space, then German/Russian/Hindi paragraphs."""
    eng = " ".join(r["text"] for r in corpus if r["lang"] == "eng_Latn")
    words, head = eng.split(), []
    count = lambda s: len(lm.tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    for w in words:
        if count(" ".join([*head, w])) > head_tokens:
            break
        head.append(w)
    while count(" ".join(head)) < head_tokens:
        head.append("the")  # one token each: lands exactly on the window edge
    head_text = " ".join(head)
    ids = ("udhr:a1:p1", "udhr:a3:p1", "udhr:a13:p2")
    tail = " ".join(
        r["text"] for r in corpus if r["lang"] in ("deu_Latn", "rus_Cyrl", "hin_Deva") and r["id"] in ids
    )
    assert count(head_text) == head_tokens and count(tail) < 500
    return head_text, tail


def test_long_document_finds_entities_past_512_tokens_like_the_pipeline_on_the_tail(lm, corpus):
    from xlmflow.ray_cluster.engine import Engine
    from xlmflow.ray_cluster.processors.ner import predict_entities

    head, tail = _long_doc(lm, corpus)
    doc = f"{head} {tail}"
    # stride 0: windows are exactly [0, 510) and [510, end), so each must match the pipeline on its text
    (ents,) = predict_entities(Engine(lm, "cpu", stride=0), [doc], "simple")
    shift = len(head) + 1
    pipe = _pipeline(lm, "simple")
    past = [e for e in _ours(ents) if e[0] >= shift]
    assert len(past) > 5
    _assert_same(past, _hf_entities(pipe, tail, shift=shift))
    _assert_same([e for e in _ours(ents) if e[0] < shift], _hf_entities(pipe, head))


def test_long_document_with_overlap_has_no_duplicate_or_overlapping_entities(lm, corpus):
    from xlmflow.ray_cluster.engine import Engine
    from xlmflow.ray_cluster.processors.ner import predict_entities

    head, tail = _long_doc(lm, corpus)
    doc = f"{head} {tail} {head}"
    eng = Engine(lm, "cpu", stride=128)
    assert len(eng.windows(eng.tokenize([doc]))) >= 3
    (ents,) = predict_entities(eng, [doc], "simple")
    spans = [(e["start"], e["end"]) for e in ents]
    assert spans == sorted(spans) and len(set(spans)) == len(spans)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert all(doc[e["start"] : e["end"]] == e["text"] for e in ents)
    assert max(e["start"] for e in ents) > len(head) + len(tail)  # found in the last window too


def test_ner_processor_writes_entities_rows(lm, settings):
    import pyarrow as pa

    from xlmflow.ray_cluster.processors.base import build_processors
    from xlmflow.ray_cluster.processors.ner import ENTITIES

    texts = [
        "Angela Merkel besuchte Paris im Jahr 2015.",
        "",
        "Москва — столица России.",
        "东京是日本的首都。",
    ]
    table = staged_docs(texts).append_column("lang", pa.array(["deu_Latn"] * 4))
    s = make_settings(**settings.model_dump(exclude={"processors"}), tasks="ner", ner_model="tiny")
    (proc,) = build_processors(s)
    assert proc.name == "ner"
    proc.setup("cpu")
    out = proc.process(table)
    assert out.rejects == [] and out.table.num_rows == 4
    (ents,) = out.datasets["entities"]
    assert ents.schema == ENTITIES and ents.num_rows > 3
    assert set(ents["doc_id"].to_pylist()) <= {"d0", "d2", "d3"}
    by_id = {f"d{i}": t for i, t in enumerate(texts)}
    for r in ents.to_pylist():
        assert by_id[r["doc_id"]][r["start"] : r["end"]] == r["text"]
        assert r["label"] in {"PER", "ORG", "LOC", "DATE"} and 0 < r["score"] <= 1
    assert set(ents["model"].to_pylist()) == {lm.name}
    info = proc.model_info()
    assert info["smoke_test"] is True and info["sha256"] == lm.info["sha256"]


def test_pipelined_chunks_give_the_same_entities(lm, settings, corpus):
    """On CUDA a model processor prepares chunk k+1 in a thread while chunk k runs; forced on here, on CPU."""
    import pyarrow as pa

    from xlmflow.ray_cluster.processors.base import build_processors

    texts = [t for _, t in _paragraphs(corpus)][:10]
    table = staged_docs(texts)
    s = make_settings(**settings.model_dump(exclude={"processors"}), tasks="ner", ner_model="tiny")
    (proc,) = build_processors(s)
    proc.setup("cpu")
    whole = proc.process(table).datasets["entities"]
    proc.pipelined, proc.engine.prefetch_docs = True, 3
    calls, infer = [], proc.infer
    proc.infer = lambda prepared: calls.append(len(prepared[0])) or infer(prepared)
    chunked = proc.process(table).datasets["entities"]
    assert calls == [3, 3, 3, 1]
    a, b = pa.concat_tables(chunked).to_pylist(), pa.concat_tables(whole).to_pylist()
    key = ("doc_id", "start", "end", "text", "label")  # scores differ in the last bits: other batches
    assert [[r[k] for k in key] for r in a] == [[r[k] for k in key] for r in b]
    assert max(abs(x["score"] - y["score"]) for x, y in zip(a, b, strict=True)) < 1e-5


class _OomOnLong:
    """Test double for a GPU too small for long windows: CUDA OOM for any batch wider than `limit`."""

    def __init__(self, model, limit: int) -> None:
        self.model, self.limit, self.config = model, limit, model.config

    def to(self, device):
        return self

    def eval(self):
        return self

    def __call__(self, input_ids, **kw):
        import torch

        if input_ids.shape[1] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")
        return self.model(input_ids=input_ids, **kw)


def test_a_document_that_does_not_fit_even_alone_becomes_a_reject(lm, settings):
    import pyarrow as pa

    from xlmflow.ray_cluster.engine import Engine
    from xlmflow.ray_cluster.processors.base import build_processors

    texts = ["Angela Merkel besuchte Paris.", "word " * 300, "Москва — столица России."]
    s = make_settings(**settings.model_dump(exclude={"processors"}), tasks="ner", ner_model="tiny")
    (proc,) = build_processors(s)
    proc.pipelined = False
    proc.engine = Engine(lm, "cpu", forward="padded")
    proc.engine.model = _OomOnLong(proc.engine.model, 100)  # the engine's own model (a twin on CPU)
    out = proc.process(staged_docs(texts))
    assert [(r["source_row"], r["reason"]) for r in out.rejects] == [(1, "processing_error")]
    assert "OutOfMemoryError" in out.rejects[0]["detail"]
    assert out.table["doc_id"].to_pylist() == ["d0", "d2"]
    ents = pa.concat_tables(out.datasets["entities"])  # one table per batch that succeeded
    assert set(ents["doc_id"].to_pylist()) <= {"d0", "d2"} and ents.num_rows > 0
