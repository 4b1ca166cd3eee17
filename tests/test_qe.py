"""QE: scores equal a direct forward pass, long pairs, language checks on real data, the flow end to end."""

from __future__ import annotations

import functools
import json

import numpy as np
import pyarrow as pa
import pytest

from tests.conftest import CORPUS, duck
from xlmflow.ray_cluster.processors.qe import QE
from xlmflow.ray_cluster.registry import make_job, make_settings
from xlmflow.schemas import STAGED_PAIRS

TARGETS = ("deu_Latn", "fra_Latn", "spa_Latn", "rus_Cyrl", "jpn_Jpan", "arb_Arab", "hin_Deva", "cmn_Hans",
           "tur_Latn", "ell_Grek", "kor_Hang")  # fmt: skip


@pytest.fixture(scope="module")
def corpus() -> dict[tuple[str, str], str]:
    with open(CORPUS, encoding="utf-8") as f:
        return {(r["id"], r["lang"]): r["text"] for r in map(json.loads, f)}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    # the session's model cache (shared with test_models/test_embed): tiny models are built once
    return str(tmp_path_factory.getbasetemp() / "xlmflow-model-cache")


def _processor(cache: str, **kw):
    from xlmflow.ray_cluster.processors.base import build_processors

    kw = {"qe_model": "tiny"} | kw
    settings = make_settings(inputs=("in",), out="out", tasks="qe", model_cache=cache, **kw)
    (proc,) = build_processors(settings)
    proc.setup("cpu")
    return proc


@pytest.fixture(scope="module")
def regression(cache):
    return _processor(cache, max_batch_tokens=512)  # several padded batches


@pytest.fixture(scope="module")
def cosine(cache):
    return _processor(cache, qe_method="cosine", max_batch_tokens=512)


def _pairs(rows: list[dict]) -> pa.Table:
    full = [
        {"pair_id": r.get("pair_id", str(i)), "source": "test", "source_row": i, "meta": "{}"}
        | {k: r.get(k) for k in ("src", "mt", "src_lang_hint", "mt_lang_hint")}
        for i, r in enumerate(rows)
    ]
    return pa.Table.from_pylist(full, schema=STAGED_PAIRS)


def _qe(proc, rows: list[dict]) -> list[dict]:
    res = proc.process(_pairs(rows))
    assert not res.rejects and res.table.num_rows == len(rows)
    (t,) = res.datasets["qe"]
    assert t.schema == QE
    return t.to_pylist()


@pytest.fixture(scope="module")
def sample(corpus) -> list[dict]:
    """English source, one UDHR paragraph per target language and article 1/26."""
    return [
        {"src": corpus[(uid, "eng_Latn")], "mt": corpus[(uid, lang)], "mt_lang_hint": lang}
        for uid in ("udhr:a1:p1", "udhr:a26:p2")
        for lang in TARGETS
    ]


@functools.cache
def _hf(path: str, cls_name: str):
    """The checkpoint loaded by plain transformers (not our loader): tokenizer and model."""
    import transformers

    cls = getattr(transformers, cls_name)
    return transformers.AutoTokenizer.from_pretrained(path), cls.from_pretrained(path).eval()


def _direct_regression(path: str, first: str, second: str) -> float:
    """One unbatched forward of AutoModelForSequenceClassification on `<s> first </s></s> second </s>`."""
    import torch

    tok, model = _hf(path, "AutoModelForSequenceClassification")
    a = tok(first, add_special_tokens=False)["input_ids"]
    b = tok(second, add_special_tokens=False)["input_ids"]
    ids = [tok.cls_token_id, *a, tok.sep_token_id, tok.sep_token_id, *b, tok.sep_token_id]
    assert ids[:1] == [0] and ids[len(a) + 1 : len(a) + 3] == [2, 2] and ids[-1] == 2
    assert ids == tok(first, second)["input_ids"]
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0, 0].item()


@pytest.mark.parametrize("order", ["src-mt", "mt-src"])
def test_regression_equals_a_direct_forward_pass(cache, regression, sample, order):
    proc = regression if order == "src-mt" else _processor(cache, max_batch_tokens=512, qe_order=order)
    got = _qe(proc, sample)
    path = proc.engine.lm.info["path"]
    for pair, row in zip(sample, got, strict=True):
        first, second = (pair["src"], pair["mt"]) if order == "src-mt" else (pair["mt"], pair["src"])
        assert abs(row["score"] - _direct_regression(path, first, second)) <= 1e-4
        assert row["method"] == "regression" and row["model"].startswith("tiny-qe@")
        assert not row["truncated"] and row["truncation"] == ""
        assert row["length_ratio"] == pytest.approx(len(pair["mt"]) / len(pair["src"]), rel=1e-6)
    assert len({round(r["score"], 6) for r in got}) > len(got) // 2  # not a constant
    assert proc.model_info()["order"] == order


def test_cosine_equals_direct_mean_pooling(cosine, sample):
    import torch

    got = _qe(cosine, sample)
    tok, model = _hf(cosine.engine.lm.info["path"], "AutoModel")

    def mean(text: str) -> np.ndarray:
        with torch.inference_mode():
            h = model(**tok(text, return_tensors="pt")).last_hidden_state[0, 1:-1]  # specials excluded
        return h.double().mean(0).numpy()

    for pair, row in zip(sample, got, strict=True):
        a, b = mean(pair["src"]), mean(pair["mt"])
        want = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        assert abs(row["score"] - want) <= 1e-5
        assert row["method"] == "cosine" and row["model"].startswith("tiny-embed@")
        assert not row["truncated"]
    assert cosine.model_info()["method"] == "cosine"


def test_long_pairs_report_how_they_were_cut(regression, cosine, corpus):
    import torch

    src = corpus[("udhr:a1:p1", "eng_Latn")]
    long_mt = " ".join(corpus[(f"udhr:a{i}:p1", "deu_Latn")] for i in range(1, 30))
    tok, model = _hf(regression.engine.lm.info["path"], "AutoModelForSequenceClassification")
    n_src, n_mt = (len(tok(t, add_special_tokens=False)["input_ids"]) for t in (src, long_mt))
    assert n_mt > 600
    (row,) = _qe(regression, [{"src": src, "mt": long_mt}])
    assert row["truncated"] and row["truncation"] == f"mt:{n_mt}->{508 - n_src}"
    # the engine cuts as HF's longest_first truncation does: same score as the tokenizer's own cut
    with torch.inference_mode():
        enc = tok(src, long_mt, truncation=True, max_length=512, return_tensors="pt")
        want = model(**enc).logits[0, 0].item()
    assert abs(row["score"] - want) <= 1e-4

    (row,) = _qe(cosine, [{"src": long_mt, "mt": src}])  # nothing cut: the long side is windowed
    windows = 1 + -(-(n_mt - 510) // (510 - 128))  # 510-token windows, 128 of overlap (default stride)
    assert row["truncated"] and row["truncation"] == f"src:{n_mt} tokens/{windows} windows"


def test_lang_mismatch_rules():
    from xlmflow.ray_cluster.processors.qe import lang_mismatch

    assert not lang_mismatch("eng_Latn", "deu_Latn", "deu_Latn")
    assert not lang_mismatch("eng_Latn", "deu_Latn", "deu")  # a bare language
    assert not lang_mismatch("eng_Latn", "cmn_Hant", "cmn_Hans")  # the language part decides
    assert not lang_mismatch("eng_Latn", "arb_Arab", "ara_Arab")  # macrolanguage code as langid maps it
    assert lang_mismatch("eng_Latn", "fra_Latn", "deu_Latn")
    assert lang_mismatch("eng_Latn", "eng_Latn", "deu_Latn")
    assert lang_mismatch("eng_Latn", "eng_Latn", None)  # untranslated copy, no target known
    assert not lang_mismatch("eng_Latn", "deu_Latn", None)
    # undetermined: only a different script says it is wrong
    assert not lang_mismatch("eng_Latn", "und_Latn", "zlm_Latn")
    assert lang_mismatch("eng_Latn", "und_Latn", "jpn_Jpan")
    assert not lang_mismatch("eng_Latn", "und_Hani", "jpn_Jpan")
    assert not lang_mismatch("eng_Latn", "und_Zyyy", "deu_Latn")
    assert not lang_mismatch("und_Latn", "und_Latn", None)


def test_lang_mismatch_on_real_pairs_with_swapped_translations(regression, corpus, tmp_path):
    """Pairs from parallel.jsonl (`xlmflow pairs make`), then each translation swapped for another
    target language's text of the same id; the hint keeps saying what the translation should be."""
    from xlmflow.tasks.pairs import make_pairs

    out = tmp_path / "pairs.jsonl"
    make_pairs(CORPUS, "eng_Latn", str(out), list(TARGETS))
    genuine = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    rows = [{"src": p["src"], "mt": p["mt"], "mt_lang_hint": p["mt_lang"]} for p in genuine]
    swap = {lang: TARGETS[(i + 3) % len(TARGETS)] for i, lang in enumerate(TARGETS)}
    swapped = [
        r | {"mt": corpus[(p["id"].split("|")[0], swap[p["mt_lang"]])]}
        for p, r in zip(genuine, rows, strict=True)
    ]
    copies = [r | {"mt": r["src"], "mt_lang_hint": None} for r in rows]  # untranslated, no target known
    got = _qe(regression, rows + swapped + copies)
    n = len(rows)
    assert n >= 500
    flags = [r["lang_mismatch"] for r in got]
    genuine_rate, swapped_rate, copy_rate = (sum(flags[k * n : (k + 1) * n]) / n for k in range(3))
    assert genuine_rate <= 0.05 and swapped_rate >= 0.95 and copy_rate >= 0.95, (
        genuine_rate,
        swapped_rate,
        copy_rate,
    )
    assert {r["src_lang"] for r in got[:n]} <= {"eng_Latn", "und_Latn"}
    assert sum(r["mt_lang"] == p["mt_lang"] for r, p in zip(got, genuine, strict=False)) >= 0.95 * n


def test_regression_needs_a_one_output_classifier(cache):
    from xlmflow.errors import ConfigError
    from xlmflow.ray_cluster.models import load_model

    encoder = load_model("tiny", "embed", make_settings(inputs=("in",), out="out", model_cache=cache))
    with pytest.raises(ConfigError, match="qe-method cosine"):
        _processor(cache, qe_model=encoder.info["path"])


BAD_PAIRS = [
    '{"id": "no-src", "mt": "Hallo"}',
    '{"id": "empty-mt", "src": "Hello", "mt": "  "}',
    '{"id": "num-src", "src": 7, "mt": "sieben"}',
    '{"id": "broken", "src": "unterminated',
]


@pytest.mark.slow
def test_flow_end_to_end_accounts_for_every_pair(prefect_harness, ray_local, corpus, cache, tmp_path):

    from xlmflow.flows.corpus import corpus_flow

    good = [
        {"id": f"{uid}|{lang}", "src": corpus[(uid, "eng_Latn")], "mt": corpus[(uid, lang)], "mt_lang": lang}
        for uid in ("udhr:a1:p1", "udhr:a3:p1", "udhr:a5:p1")
        for lang in TARGETS[:6]
    ]
    # an untranslated "translation" (English), no target hint: flagged by the copy rule
    good.append(
        {"id": "copy", "src": corpus[("udhr:a1:p1", "eng_Latn")], "mt": corpus[("udhr:a2:p1", "eng_Latn")]}
    )
    path = tmp_path / "pairs.jsonl"
    lines = [json.dumps(p, ensure_ascii=False) for p in good] + BAD_PAIRS
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = str(tmp_path / "out")
    job = make_job(out=out, tasks="qe", actors=1, qe_model="tiny", model_cache=cache, shard_chars=2000)
    res = corpus_flow(inputs=[str(path)], settings=job, date="2026-11-01")
    m = res["manifest"]
    c = m["counts"]
    assert res["status"] == "committed" and m["shards"]["total"] > 1 and not m["shards"]["failed"]
    assert c["input_rows"] == len(lines) == c["documents"] + c["rejects"]
    assert c["documents"] == c["qe"] == len(good) and c["rejects"] == len(BAD_PAIRS)
    assert c["rejects_by_reason"] == {"missing_src": 1, "empty_mt": 1, "non_string_src": 1, "invalid_json": 1}
    assert m["models"]["qe"]["method"] == "regression" and m["models"]["qe"]["smoke_test"]
    assert set(m["qe_quantiles"]) == {"p05", "p25", "p50", "p75", "p95"}
    assert sum(c["by_lang"].values()) == c["qe"] and c["by_lang"]["eng_Latn->eng_Latn"] == 1  # the copy

    def read(name: str):
        return duck(out, name, m["date"]).sql(f"select * from {name}")

    qe = read("qe")
    assert set(QE.names) <= set(qe.columns)  # (+ the table's partition column `date`)
    rows = {r[0]: dict(zip(qe.columns, r, strict=True)) for r in qe.fetchall()}
    pair_ids = {r[0] for r in read("pairs").select("pair_id").fetchall()}
    assert set(rows) == pair_ids == {p["id"] for p in good}
    assert all(r["model"].startswith("tiny-qe@") and r["src_lang"] == "eng_Latn" for r in rows.values())
    assert not any(rows[p["id"]]["lang_mismatch"] for p in good[:-1])
    assert rows["copy"]["lang_mismatch"] and rows["copy"]["mt_lang"] == "eng_Latn"
    rej = read("rejects").select("reason", "raw").fetchall()
    assert sorted(r[0] for r in rej) == sorted(c["rejects_by_reason"])
