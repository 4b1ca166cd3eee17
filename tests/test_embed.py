"""Embeddings: mean pooling equals a direct forward pass, long documents, lawdr, the processor."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import CORPUS, staged_docs
from xlmflow.ray_cluster.models import load_model
from xlmflow.ray_cluster.registry import make_settings

LANGS = ("eng_Latn", "deu_Latn", "rus_Cyrl", "arb_Arab", "cmn_Hans", "hin_Deva", "jpn_Jpan", "kor_Hang")


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    # the session's model cache (shared with test_models/test_ner): the tiny model is built once
    return make_settings(
        inputs=("in",), out="out", model_cache=str(tmp_path_factory.getbasetemp() / "xlmflow-model-cache")
    )


@pytest.fixture(scope="module")
def lm(settings):
    return load_model("tiny", "embed", settings)


@pytest.fixture(scope="module")
def texts():
    with open(CORPUS, encoding="utf-8") as f:
        recs = [json.loads(line) for line in f]
    return [r["text"] for r in recs if r["lang"] in LANGS and r["id"] in ("udhr:a1:p1", "udhr:a26:p2")]


def _direct(lm, ids: list[int], layers: int | None = None) -> np.ndarray:
    """Sum of content-token states of one unpadded forward pass (specials excluded)."""
    import torch

    with torch.inference_mode():
        out = lm.model(input_ids=torch.tensor([[0, *ids, 2]]), output_hidden_states=True)
    h = out.last_hidden_state if layers is None else torch.stack(out.hidden_states[-layers:]).mean(0)
    return h[0, 1:-1].double().sum(0).numpy()


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def test_mean_pooling_matches_a_direct_forward_pass(lm, texts):
    from xlmflow.ray_cluster.engine import Engine
    from xlmflow.ray_cluster.processors.embed import embed_texts

    assert len(texts) == 2 * len(LANGS)
    eng = Engine(lm, "cpu", max_batch_tokens=512)  # several padded batches
    got = embed_texts(eng, texts)
    assert got.shape == (len(texts), lm.model.config.hidden_size) and got.dtype == np.float32
    for text, vec in zip(texts, got, strict=True):
        ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        want = _unit(_direct(lm, ids) / len(ids))
        assert float(vec @ want) >= 0.9999
    assert float(got[0] @ got[1]) < 0.9999  # different texts, different vectors


def test_long_document_pools_every_token_once_across_windows(lm, texts):
    from xlmflow.ray_cluster.engine import Engine
    from xlmflow.ray_cluster.processors.embed import embed_texts

    doc = " ".join(texts * 3)
    ids = lm.tokenizer(doc, add_special_tokens=False)["input_ids"]
    assert len(ids) > 1200
    # stride 0: disjoint windows of 510, each run on its own; the document is their token-weighted mean
    chunks = [ids[i : i + 510] for i in range(0, len(ids), 510)]
    want = _unit(sum(_direct(lm, c) for c in chunks) / len(ids))
    (got,) = embed_texts(Engine(lm, "cpu", stride=0), [doc])
    assert float(got @ want) >= 0.9999
    # with overlap, the vector is still a mean over the whole document, close to the disjoint one
    eng = Engine(lm, "cpu", stride=128)
    assert len(eng.windows(eng.tokenize([doc]))) > len(chunks)
    (overlapped,) = embed_texts(eng, [doc])
    assert abs(float(np.linalg.norm(overlapped)) - 1) < 1e-5 and float(overlapped @ want) > 0.99
    # a document's vector does not depend on what else is in the batch
    together = embed_texts(eng, [texts[0], doc, texts[1]])
    assert float(together[1] @ overlapped) >= 0.9999


def test_lawdr_averages_the_last_layers(lm, texts):
    from xlmflow.ray_cluster.engine import Engine
    from xlmflow.ray_cluster.processors.embed import LAWDR_LAYERS, embed_texts

    eng = Engine(lm, "cpu")
    got = embed_texts(eng, texts[:4], "lawdr")
    mean = embed_texts(eng, texts[:4], "mean")
    for text, vec, m in zip(texts[:4], got, mean, strict=True):
        ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert float(vec @ _unit(_direct(lm, ids, LAWDR_LAYERS))) >= 0.9999
        assert np.abs(vec - m).max() > 1e-3  # not the plain mean pooling
    with pytest.raises(ValueError, match="pooling"):
        embed_texts(eng, texts[:1], "cls")


def test_embed_processor_writes_one_vector_per_document(lm, settings):

    from xlmflow.ray_cluster.processors.base import build_processors
    from xlmflow.ray_cluster.processors.embed import embeddings_schema

    texts = ["Alle Menschen sind frei.", "", "Все люди рождаются свободными. " * 200]
    s = make_settings(**settings.model_dump(exclude={"processors"}), tasks="embed", embed_model="tiny")
    (proc,) = build_processors(s)
    proc.setup("cpu")
    out = proc.process(staged_docs(texts))
    assert out.rejects == []
    (emb,) = out.datasets["embeddings"]
    assert emb.schema == embeddings_schema(lm.model.config.hidden_size)
    assert emb["doc_id"].to_pylist() == ["d0", "d1", "d2"]
    vecs = np.array(emb["embedding"].to_pylist(), dtype=np.float32)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)  # the empty text too (its <s></s>)
    assert set(emb["pooling"].to_pylist()) == {"mean"}
    assert set(emb["model"].to_pylist()) == {lm.name} and lm.name.startswith("tiny-embed@")
    assert proc.model_info()["smoke_test"] is True
