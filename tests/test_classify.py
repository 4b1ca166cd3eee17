"""classify: the text-classification pipeline's labels and scores, long documents, refused checkpoints."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from tests.conftest import CORPUS, staged_docs
from xlmflow.errors import ConfigError
from xlmflow.ray_cluster.models import make_tiny_xlmr
from xlmflow.ray_cluster.processors.base import build_processors
from xlmflow.ray_cluster.registry import make_settings

SCRIPTS = [
    "eng_Latn",
    "rus_Cyrl",
    "arb_Arab",
    "heb_Hebr",
    "hin_Deva",
    "cmn_Hans",
    "jpn_Jpan",
    "kor_Hang",
    "ell_Grek",
]
LABELS = {0: "negative", 1: "neutral", 2: "positive", 3: "mixed"}


def _sharpen(model) -> None:  # noqa: ANN001 - random heads give near-uniform scores; spread them
    import torch

    with torch.no_grad():
        model.classifier.out_proj.weight.normal_(0.0, 2.0)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One tiny checkpoint per head kind, built once."""
    root = tmp_path_factory.mktemp("classify-models")
    kinds = [("single_label_classification", 3), ("multi_label_classification", 4), ("regression", 1)]
    return {problem: _checkpoint(root / problem, problem, n) for problem, n in kinds}


def _checkpoint(path, problem: str | None, num_labels: int) -> str:
    cfg = {"num_labels": num_labels, "problem_type": problem}
    if num_labels > 1:
        cfg["id2label"] = {i: LABELS[i] for i in range(num_labels)}
        cfg["label2id"] = {v: k for k, v in cfg["id2label"].items()}
    return make_tiny_xlmr("classify", "AutoModelForSequenceClassification", str(path), 1, cfg, _sharpen)


@pytest.fixture(scope="module")
def texts():
    with open(CORPUS, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    picked = [r["text"] for r in rows if r["lang"] in SCRIPTS and r["id"] == "udhr:a1:p1"]
    assert len(picked) == len(SCRIPTS)
    return picked


def _classify(model_dir: str, texts: list[str], tmp_path, **options) -> tuple[list[dict], object]:
    opts = {f"classify_{k}": v for k, v in options.items()}
    s = make_settings(inputs=("in",), out=str(tmp_path), tasks="classify", classify_model=model_dir, **opts)
    (proc,) = build_processors(s)
    proc.setup("cpu")
    out = proc.process(staged_docs(texts))
    assert out.rejects == []
    (table,) = out.datasets["classifications"]
    assert table["doc_id"].to_pylist() == [f"d{i}" for i in range(len(texts))]
    return table.to_pylist(), proc


@pytest.mark.parametrize(
    ("problem", "num_labels"),
    [("single_label_classification", 3), ("multi_label_classification", 4), ("regression", 1)],
)
def test_labels_and_scores_equal_the_text_classification_pipeline(
    checkpoints, tmp_path, texts, problem, num_labels
):
    from transformers import pipeline

    model = checkpoints[problem]
    ours, proc = _classify(model, texts, tmp_path, threshold=0.5)
    with warnings.catch_warnings():  # the same weights and tokenizer objects, loaded once
        warnings.simplefilter("ignore")
        pl = pipeline(
            "text-classification", model=proc.engine.model, tokenizer=proc.engine.tokenizer, top_k=None
        )
        ref = pl(texts)
    for row, want in zip(ours, ref, strict=True):
        assert row["instance"] == "classify" and row["model"].startswith("tiny-classify@")
        got = {s["label"]: s["score"] for s in row["scores"]}
        if problem == "regression":
            assert row["label"] == "score" and row["labels"] == []
            assert abs(row["score"] - want[0]["score"]) < 1e-4
            continue
        assert [s["label"] for s in row["scores"]] == [w["label"] for w in want]  # best first, as top_k=None
        assert max(abs(got[w["label"]] - w["score"]) for w in want) < 1e-4
        assert row["label"] == want[0]["label"] and abs(row["score"] - want[0]["score"]) < 1e-4
        if problem == "multi_label_classification":
            assert row["labels"] == [w["label"] for w in want if w["score"] >= 0.5]
        else:
            assert row["labels"] == [row["label"]] and abs(sum(got.values()) - 1) < 1e-5
    assert len({round(r["score"], 5) for r in ours}) > 1  # the scores are not constant


def test_a_long_document_is_every_window_combined(checkpoints, tmp_path, texts):
    from xlmflow.ray_cluster.processors.classify import combine_windows

    model = checkpoints["single_label_classification"]
    s = make_settings(inputs=("in",), out=str(tmp_path), tasks="classify", classify_model=model)
    (proc,) = build_processors(s)
    proc.setup("cpu")
    long_doc = " ".join(texts) * 4
    assert len(proc.prepare(staged_docs([long_doc]))) > 2  # several 510-token windows

    def scores(text: str) -> dict:
        (row,) = proc.process(staged_docs([text])).datasets["classifications"][0].to_pylist()
        return {x["label"]: x["score"] for x in row["scores"]}

    mean, head = scores(long_doc), scores(texts[0])
    proc.options = proc.options.model_copy(update={"combine": "max"})
    top = scores(long_doc)
    assert abs(sum(mean.values()) - 1) < 1e-5 and abs(sum(top.values()) - 1) < 1e-5
    assert mean != top and mean != head  # not only the first window, and the two rules differ

    class W:  # two windows of one document owning 3 and 1 tokens
        def __init__(self, doc, own_start, own_end):
            self.doc, self.own_start, self.own_end = doc, own_start, own_end

    wins, logits = [W(0, 0, 3), W(0, 3, 4)], [np.array([1.0, 0.0]), np.array([-3.0, 4.0])]
    assert combine_windows(1, wins, logits).tolist() == [[0.0, 1.0]]
    assert combine_windows(1, wins, logits, "max").tolist() == [[1.0, 4.0]]


def test_a_one_output_checkpoint_without_regression_is_refused(tmp_path, texts):
    model = _checkpoint(tmp_path / "m", None, 1)  # the pipeline would put a sigmoid over its output
    with pytest.raises(ConfigError, match="problem_type: regression"):
        _classify(model, texts[:1], tmp_path)


def test_models_tiny_builds_a_classify_checkpoint(tmp_path):
    from transformers import AutoConfig

    from xlmflow.cli import main

    assert main(["models", "tiny", "--task", "classify", "--out", str(tmp_path / "tiny")]) == 0
    cfg = AutoConfig.from_pretrained(tmp_path / "tiny")
    assert cfg.num_labels == 3 and cfg.xlmflow_smoke_test
    assert cfg.architectures == ["XLMRobertaForSequenceClassification"]
