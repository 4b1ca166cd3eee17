"""The packed (padding-free) forward equals the padded one, and says when it did not run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import CORPUS
from xlmflow.errors import ConfigError
from xlmflow.ray_cluster.engine import Engine
from xlmflow.ray_cluster.models import LoadedModel, load_model
from xlmflow.ray_cluster.registry import make_settings


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return make_settings(
        inputs=("in",), out="out", model_cache=str(tmp_path_factory.getbasetemp() / "xlmflow-model-cache")
    )


@pytest.fixture(scope="module")
def texts():
    with open(CORPUS, encoding="utf-8") as f:
        recs = [json.loads(line) for line in f]
    some = [r["text"] for r in recs][:: max(1, len(recs) // 60)]
    # lengths from a few tokens to several windows, in many scripts
    return [*some, " ".join(some)[:6000], "", "x"]


def _engines(lm, **kw):
    packed, padded = Engine(lm, "cpu", forward="packed", **kw), Engine(lm, "cpu", forward="padded", **kw)
    assert (packed.forward_path, padded.forward_path) == ("packed", "padded")
    return packed, padded


def _logits(out, mask, rows):
    return out.logits.float()


@pytest.mark.parametrize("rows", [0, 100])
def test_token_logits_and_entities_equal_the_padded_forward(settings, texts, monkeypatch, rows):
    from xlmflow.ray_cluster import packed as packed_forward
    from xlmflow.ray_cluster.processors.ner import predict_entities, tokens_and_windows

    # the per-token part of each layer in one pass, or in blocks of 100 rows (the last one partial)
    monkeypatch.setattr(packed_forward, "TOKEN_ROWS", rows)
    lm = load_model("tiny", "ner", settings)
    packed, padded = _engines(lm, max_batch_tokens=2048)
    _, wins = tokens_and_windows(packed, texts)
    assert len(wins) > len(texts)  # the long text has windows
    seqs = [w.input_ids for w in wins]
    assert len(packed.batches([len(s) for s in seqs])) < len(padded.batches([len(s) for s in seqs]))
    got, ref = packed.run(seqs, _logits), padded.run(seqs, _logits)
    worst = max(
        float(np.abs(a[: len(s)] - b[: len(s)]).max()) for (a,), (b,), s in zip(got, ref, seqs, strict=True)
    )
    assert worst <= 1e-5
    got_ents, ref_ents = predict_entities(packed, texts), predict_entities(padded, texts)
    spans = [[{k: e[k] for k in ("start", "end", "text", "label")} for e in doc] for doc in ref_ents]
    assert sum(map(len, spans)) > 50
    assert [[{k: e[k] for k in ("start", "end", "text", "label")} for e in doc] for doc in got_ents] == spans
    scores = [e["score"] for doc in got_ents for e in doc], [e["score"] for doc in ref_ents for e in doc]
    assert np.abs(np.subtract(*scores)).max() <= 1e-5


@pytest.mark.parametrize("pooling", ["mean", "lawdr"])
def test_embeddings_equal_the_padded_forward(settings, texts, pooling):
    from xlmflow.ray_cluster.processors.embed import embed_texts

    lm = load_model("tiny", "embed", settings)
    packed, padded = _engines(lm, max_batch_tokens=2048)
    a, b = embed_texts(packed, texts, pooling), embed_texts(padded, texts, pooling)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() >= 0.99999


@pytest.mark.parametrize("kind", ["classify", "qe"])
def test_sequence_logits_equal_the_padded_forward(settings, texts, kind):
    lm = load_model("tiny", kind, settings)
    packed, padded = _engines(lm, max_batch_tokens=1024)
    seqs = [w.input_ids for w in packed.windows(packed.tokenize(texts))]
    got, ref = packed.run(seqs, _logits), padded.run(seqs, _logits)
    assert max(float(np.abs(a - b).max()) for (a,), (b,) in zip(got, ref, strict=True)) <= 1e-5


@pytest.mark.parametrize("rows", [0, 64])
def test_plain_linears_in_row_blocks_equal_the_models_own_forward(settings, texts, monkeypatch, rows):
    """Without oneDNN (int8, CUDA, other CPUs) the packed layers run the model's own Linear modules, GELU
    in place on the first FFN GEMM's output, in row blocks on CPU: the model's own padded logits."""
    import torch

    from xlmflow.ray_cluster import packed

    monkeypatch.setattr(packed, "TOKEN_ROWS", rows)
    lm = load_model("tiny", "ner", settings)
    eng = Engine(lm, "cpu")
    seqs = [w.input_ids for w in eng.windows(eng.tokenize(texts[:24]))]
    lens = [len(s) for s in seqs]
    assert sum(lens) % 64 and sum(lens) > 3 * 64
    ids = torch.tensor([t for s in seqs for t in s])
    padded = torch.full((len(seqs), max(lens)), lm.tokenizer.pad_token_id)
    mask = torch.zeros_like(padded)
    for i, s in enumerate(seqs):
        padded[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
    with torch.inference_mode():
        got = packed.forward(lm.model.eval(), ids, lens).logits
        ref = lm.model(input_ids=padded, attention_mask=mask).logits
    assert max(float((got[i, :n] - ref[i, :n]).abs().max()) for i, n in enumerate(lens)) <= 1e-5


def test_jagged_attention_equals_the_per_sequence_loop(settings, texts):
    """CUDA runs attention over a jagged nested tensor; on CPU the loop is faster. Same numbers."""
    import torch

    from xlmflow.ray_cluster import packed

    lm = load_model("tiny", "ner", settings)
    eng = Engine(lm, "cpu")
    seqs = [w.input_ids for w in eng.windows(eng.tokenize(texts[:20]))]
    ids = torch.tensor([t for s in seqs for t in s])
    with torch.no_grad():
        outs = [
            packed.forward(lm.model, ids, [len(s) for s in seqs], attention=a) for a in ("loop", "jagged")
        ]
    assert float((outs[0].logits - outs[1].logits).abs().max()) <= 1e-5


def test_models_it_does_not_cover_run_padded_and_packed_refuses_them(settings, texts):
    from transformers import BertConfig, BertForTokenClassification

    tiny = load_model("tiny", "ner", settings)
    cfg = BertConfig(vocab_size=tiny.tokenizer.vocab_size + 10, hidden_size=32, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=64, num_labels=3)  # fmt: skip
    bert = LoadedModel(tiny.tokenizer, BertForTokenClassification(cfg).eval(), dict(tiny.info, name="bert"))
    eng = Engine(bert, "cpu")
    assert eng.forward_path == "padded" and eng.describe()["forward"] == "padded"
    assert len(eng.run([[0, 5, 6, 2], [0, 7, 2]], _logits)) == 2
    with pytest.raises(ConfigError, match="BertForTokenClassification.*forward=auto or padded"):
        Engine(bert, "cpu", forward="packed")


class _OomOver:  # stands in for one Linear: out of memory on more than `limit` tokens
    def __init__(self, linear, limit: int) -> None:
        self.linear, self.limit, self.calls = linear, limit, []

    def __call__(self, x):
        import torch

        tokens = x.shape[0] if x.dim() == 2 else x.shape[0] * x.shape[1]
        self.calls.append(tokens)
        if tokens > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.linear(x)


def test_out_of_memory_splits_packed_batches(settings, texts):
    from xlmflow.ray_cluster.processors.ner import predict_entities

    lm = load_model("tiny", "ner", settings)
    ref = predict_entities(Engine(lm, "cpu", forward="packed"), texts[:30])
    eng = Engine(lm, "cpu", forward="packed", max_batch_tokens=4096)
    layer = eng.model.base_model.encoder.layer[0].attention.self  # the engine's model (a twin on CPU)
    oom = _OomOver(layer.query, 600)
    try:
        layer.__dict__["query"] = oom  # shadows the registered module until deleted
        got = predict_entities(eng, texts[:30])
        assert [[e["label"] for e in d] for d in got] == [[e["label"] for e in d] for d in ref]
        assert max(oom.calls) > 600 and sum(c <= 600 for c in oom.calls) > 1  # failed, then halves ran
    finally:
        del layer.__dict__["query"]


def test_fp32_cpu_runs_linears_on_onednn_in_a_twin_equal_to_torch(settings, texts):
    import torch

    from xlmflow.ray_cluster import packed as packed_forward

    lm = load_model("tiny", "ner", settings)
    linears = sum(isinstance(m, torch.nn.Linear) for m in lm.model.modules())
    eng = Engine(lm, "cpu", max_batch_tokens=2048)
    assert eng.describe() == {"forward": "packed", "precision": "fp32", "device": "cpu", "gemm": "onednn"}
    assert _count("DnnlLinear", eng.model) == linears > 0 and _count("DnnlLinear", lm.model) == 0
    assert (
        eng.model.roberta.embeddings.word_embeddings.weight
        is lm.model.roberta.embeddings.word_embeddings.weight
    )
    ffn = eng.model.roberta.encoder.layer[0].intermediate  # GELU fused into the FFN's first GEMM
    assert ffn.dense.post == "gelu" and isinstance(ffn.intermediate_act_fn, torch.nn.Identity)
    seqs = [w.input_ids for w in eng.windows(eng.tokenize(texts))]
    lens = [len(s) for s in seqs[:24]]
    ids = torch.tensor([t for s in seqs[:24] for t in s])
    with torch.inference_mode():
        got = packed_forward.forward(eng.model, ids, lens).logits
        ref = packed_forward.forward(lm.model.eval(), ids, lens).logits
    assert float((got - ref).abs().max()) <= 1e-5


def test_int8_quantizes_every_linear_of_a_copy_and_stays_close(settings, texts):
    import torch

    lm = load_model("tiny", "ner", settings)
    linears = sum(isinstance(m, torch.nn.Linear) for m in lm.model.modules())
    eng = Engine(lm, "cpu", cpu_precision="int8")
    assert eng.describe() == {
        "forward": "packed",
        "precision": "int8",
        "device": "cpu",
        "gemm": "fbgemm-int8",
    }
    assert (
        _count("Int8Linear", eng.model) == linears > 0 and _count("Int8Linear", lm.model) == 0
    )  # the loaded model is untouched
    fp32 = Engine(lm, "cpu")
    seqs = [w.input_ids for w in fp32.windows(fp32.tokenize(texts))]
    got, ref = eng.run(seqs, _logits), fp32.run(seqs, _logits)
    same = np.concatenate(
        [a[: len(s)].argmax(1) == b[: len(s)].argmax(1) for (a,), (b,), s in zip(got, ref, seqs, strict=True)]
    )
    diff = max(float(np.abs(a - b).max()) for (a,), (b,) in zip(got, ref, strict=True))
    assert same.mean() >= 0.95 and 0 < diff < 1.0  # int8: close to fp32, not equal


def test_the_manifest_lists_every_way_the_actors_ran_a_model():
    from xlmflow.manifest import run_models

    cpu = {"models": {"ner": {"type": "ner", "device": "cpu", "precision": "fp32", "forward": "packed"}}}
    gpu = {"models": {"ner": {"type": "ner", "device": "cuda", "precision": "bf16", "forward": "packed"}}}
    assert run_models([cpu, cpu])["ner"] == cpu["models"]["ner"]
    mixed = run_models([cpu, gpu, cpu])["ner"]
    assert (mixed["device"], mixed["precision"], mixed["forward"]) == ("cpu+cuda", "fp32+bf16", "packed")


def test_forward_and_precision_are_part_of_the_config_hash():
    base = dict(inputs=("in",), out="out", tasks="ner", ner_model="tiny")
    hashes = {
        make_settings(**base, **kw).config_hash()
        for kw in ({}, {"forward": "padded"}, {"cpu_precision": "int8"}, {"gpu_precision": "fp32"})
    }
    assert len(hashes) == 4
    assert make_settings(**base, cpu_workers=3).config_hash() == make_settings(**base).config_hash()


def _count(layer: str, model) -> int:  # noqa: ANN001
    """How many layers of class `layer` the model has (the swapped-in Linear layers)."""
    return sum(type(m).__name__ == layer for m in model.modules())
