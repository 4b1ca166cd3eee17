"""The processor contract: a plug-in installed with pip runs like a built-in, named instances, classify
in a real run, undeclared output refused, systemic failures fail the run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pyarrow as pa
import pytest

from tests.conftest import duck, staged_docs
from xlmflow.errors import ConfigError, FatalError, SystemicError
from xlmflow.ray_cluster.processors.base import Processor, ProcessorContractError
from xlmflow.ray_cluster.registry import make_job, make_settings
from xlmflow.settings import ProcessorSpec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "examples", "udhr-sample.jsonl")
XLMFLOW = os.path.join(os.path.dirname(sys.executable), "xlmflow")
DATE = "2026-11-01"


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """examples/plugin installed into this environment with a real pip install, removed afterwards."""
    src = tmp_path_factory.mktemp("plugin-src") / "plugin"
    shutil.copytree(os.path.join(ROOT, "examples", "plugin"), src)  # pip builds in the source tree
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*pip, str(src)], check=True, timeout=300)
    yield
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "xlmflow-tokstats"], check=False)


def test_plugin_named_instances_and_classify_in_one_run_int8_with_cpu_workers(
    plugin, cli_env, tmp_path_factory, tmp_path
):
    cache = str(tmp_path_factory.getbasetemp() / "xlmflow-model-cache")
    out = str(tmp_path / "out")
    cmd = [XLMFLOW, "run", SAMPLE, "--out", out, "--date", DATE, "--model-cache", cache]
    cmd += ["--tasks", "lid,tokstats,classify", "--classify-model", "tiny", "--tokstats-min-chars", "2"]
    cmd += ["--proc", "entities=ner", "--entities.model", "tiny"]
    cmd += ["--proc", "acronyms=ner", "--acronyms.model", "tiny", "--acronyms.aggregation", "first"]
    cmd += ["--cpu-precision", "int8", "--cpu-workers", "1"]  # int8 Linear layers; phases in a worker
    p = subprocess.run(cmd, capture_output=True, text=True, env=cli_env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    with open(os.path.join(out, "_manifests", f"date={DATE}.json")) as f:
        m = json.load(f)
    procs = {x["name"]: x for x in m["processors"]}
    assert list(procs) == ["lid", "tokstats", "classify", "entities", "acronyms"]
    assert procs["tokstats"]["version"] == "1 (xlmflow-tokstats==0.1.0)"
    assert procs["tokstats"]["options"] == {"min_chars": 2}
    assert procs["acronyms"]["type"] == "ner" and procs["acronyms"]["options"]["aggregation"] == "first"
    assert procs["entities"]["options"]["aggregation"] == "simple"
    for name in ("classify", "entities", "acronyms"):  # each instance's resolved model, and how it ran
        assert procs[name]["model"]["smoke_test"] and procs[name]["model"]["sha256"]
        assert (procs[name]["model"]["precision"], procs[name]["model"]["forward"]) == ("int8", "packed")
    assert all(a["cpu_workers"] == 1 for a in m["actors"]) and m["actors"]
    c = m["counts"]
    assert c["documents"] == c["classifications"] and c["token_stats"] > 0 and c["entities"] > 0

    con = duck(out, "documents", DATE)
    duck(out, "token_stats", DATE, con)
    duck(out, "classifications", DATE, con)
    duck(out, "entities", DATE, con)
    docs = con.sql("select text, lang, n_tokens from documents").fetchall()
    assert len(docs) == c["documents"]
    assert all(n == sum(len(w) >= 2 for w in text.split()) for text, _, n in docs)
    per_lang = dict(con.sql("select lang, count(*) from documents group by lang").fetchall())
    stats = con.sql("select lang, sum(documents), sum(tokens) from token_stats group by lang").fetchall()
    assert {lang: n for lang, n, _ in stats} == per_lang
    assert sum(t for *_, t in stats) == sum(n for *_, n in docs)
    assert con.sql("select distinct instance from token_stats").fetchall() == [("tokstats",)]
    labels = con.sql("select distinct label, instance from classifications").fetchall()
    assert {lab for lab, _ in labels} <= {"negative", "neutral", "positive"} and {i for _, i in labels} == {
        "classify"
    }
    by_instance = dict(con.sql("select instance, count(*) from entities group by instance").fetchall())
    assert set(by_instance) == {"entities", "acronyms"}


class _Sneaky(Processor):
    """Emits what the test tells it to, declaring only `flag` and the dataset `notes`."""

    columns = pa.schema([("flag", pa.bool_())])
    datasets = {
        "notes": pa.schema([("doc_id", pa.string()), ("instance", pa.string()), ("note", pa.string())])
    }
    emit: dict = {}

    def finish(self, batch, prepared, inferred):  # noqa: ANN001, ANN201
        from xlmflow.ray_cluster.processors.base import BatchOutput

        n = batch.num_rows
        cols = {"flag": pa.array([True] * n)}
        notes = {"doc_id": batch["doc_id"], "note": pa.array(["x"] * n)}
        return BatchOutput(
            columns={**cols, **self.emit.get("columns", {})},
            datasets=self.emit.get("datasets", {"notes": pa.table(notes)}),
        )


_Sneaky.name = "sneaky"  # set after the class body: a test class stays out of the registry


@pytest.mark.parametrize(
    ("emit", "message"),
    [
        ({"columns": {"lang2": pa.array(["x", "y"])}}, "column 'lang2' it does not declare"),
        ({"datasets": {"extra": pa.table({"doc_id": ["d0"]})}}, "dataset 'extra' it does not declare"),
        (
            {"datasets": {"notes": pa.table({"doc_id": ["d0"], "note": ["n"], "more": [1]})}},
            "undeclared: ['more']",
        ),
    ],
)
def test_output_a_processor_did_not_declare_is_an_error_not_a_drop(tmp_path, emit, message):
    proc = _Sneaky(
        ProcessorSpec(name="sneaky", type="sneaky"), make_settings(inputs=("in",), out=str(tmp_path))
    )
    out = proc.process(staged_docs(["a", "b"]))
    assert (
        out.table["flag"].to_pylist() == [True, True]
        and out.datasets["notes"][0]["instance"][0].as_py() == "sneaky"
    )
    proc.emit = emit
    with pytest.raises(ProcessorContractError, match=message.replace("[", r"\[").replace("]", r"\]")):
        proc.process(staged_docs(["a", "b"]))


@pytest.fixture(scope="module")
def small_vocab_ner(tmp_path_factory):
    """Loads fine, fails on almost every document: its vocabulary is smaller than the tokenizer's."""
    from xlmflow.ray_cluster.models import make_tiny_xlmr

    path = str(tmp_path_factory.mktemp("small-vocab"))
    labels = {"id2label": {0: "O", 1: "B-PER"}, "label2id": {"O": 0, "B-PER": 1}, "vocab_size": 1000}
    return make_tiny_xlmr("ner", "AutoModelForTokenClassification", path, 0, labels)


def test_a_processor_failing_on_most_rows_is_systemic(small_vocab_ner, tmp_path):
    s = make_settings(inputs=("in",), out=str(tmp_path), tasks="ner", ner_model=small_vocab_ner)
    from xlmflow.ray_cluster.processors.base import build_processors

    (proc,) = build_processors(s)
    proc.setup("cpu")
    few = proc.process(staged_docs(["Angela Merkel", "Paris", "ok"]))  # a handful of failures: still rejects
    assert [r["reason"] for r in few.rejects] == ["processing_error"] * 3
    with pytest.raises(SystemicError, match="First error: ner: IndexError"):
        proc.process(staged_docs([f"Dokument Nummer {i} über Berlin" for i in range(200)]))


def test_a_systemic_failure_fails_the_run_and_commits_nothing(
    prefect_harness, ray_local, small_vocab_ner, tmp_path
):
    from xlmflow.flows.corpus import corpus_flow
    from xlmflow.manifest import read_manifest

    out = str(tmp_path / "out")
    job = make_job(out=out, tasks="ner", ner_model=small_vocab_ner, actors=1)
    with pytest.raises(FatalError, match="failed on .* rows of a shard.*First error: ner: IndexError.*rerun"):
        corpus_flow(inputs=[SAMPLE], settings=job, date=DATE)
    assert read_manifest(out, DATE) is None
    assert os.path.isdir(os.path.join(out, "_staging", f"date={DATE}"))  # kept: a rerun resumes from it


def test_an_old_style_deployment_fails_with_how_to_redeploy(prefect_harness, tmp_path):
    from xlmflow.flows.corpus import corpus_flow

    state = corpus_flow(inputs=[SAMPLE], out=str(tmp_path), tasks="lid", ner_model=None, return_state=True)
    assert state.is_failed()
    assert "created by an older xlmflow" in state.message and "xlmflow deploy" in state.message


def test_a_processor_type_named_like_a_built_in_is_refused():
    from importlib.metadata import EntryPoint

    from xlmflow.ray_cluster.registry import ENTRY_POINT_GROUP, load_plugin, registry

    lid = registry()["lid"]
    # a class of another package that takes a built-in's name, even under the built-in's class name
    with pytest.raises(ConfigError, match="two processor types are named 'lid'.*needs a name of its own"):
        type("LidProcessor", (Processor,), {"name": "lid", "__module__": "some_plugin"})
    assert registry()["lid"] is lid
    # an entry point named like a built-in (here: one pointing at the built-in itself)
    ep = EntryPoint("lid", "xlmflow.ray_cluster.processors.lid:LidProcessor", ENTRY_POINT_GROUP)
    with pytest.raises(ConfigError, match="'lid' .* is named like a built-in processor type"):
        load_plugin(ep, set(registry()))
    assert lid.package is None
