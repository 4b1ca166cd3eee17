"""The deployments are declared once (flows/deploy.py): the committed prefect.yaml is what the command in
its head prints, and the three deployments name the flows their entrypoints hold."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from xlmflow.cli import build_parser
from xlmflow.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def _deploy(argv: list[str], capsys) -> str:  # noqa: ANN001
    ns = build_parser(argv).parse_args(argv)
    assert ns.func(ns) == 0
    return capsys.readouterr().out


def test_prefect_yaml_is_what_the_code_generates(capsys):
    text = (ROOT / "prefect.yaml").read_text()
    (line,) = [ln for ln in text.splitlines() if ln.startswith("#   xlmflow deploy ")]
    argv = shlex.split(line.removeprefix("#   ").removesuffix(" > prefect.yaml"))[1:]
    assert _deploy(argv, capsys) == text, (
        f"prefect.yaml is not what flows/deploy.py generates; regenerate it: {line.removeprefix('#   ')}"
    )
    # what `prefect deploy --all` reads: each entrypoint's flow is the one the deployment's name says
    from xlmflow.flows.backfill import backfill_flow
    from xlmflow.flows.corpus import corpus_flow
    from xlmflow.flows.daily import daily_flow

    doc = yaml.safe_load(text)
    flows = {"partition": corpus_flow, "daily": daily_flow, "backfill": backfill_flow}
    assert {d["name"]: d["entrypoint"].rsplit(":", 1)[1] for d in doc["deployments"]} == {
        name: fl.fn.__name__ for name, fl in flows.items()
    }
    backfill = next(d for d in doc["deployments"] if d["name"] == "backfill")
    assert backfill["parameters"]["deployment"] == f"{corpus_flow.name}/partition"


def test_deploy_refuses_an_env_without_value(capsys):
    argv = ["deploy", "--input", "in/date={date}", "--out", "out", "--env", "HF_HUB_OFFLINE", "--print-yaml"]
    with pytest.raises(ConfigError, match="--env 'HF_HUB_OFFLINE': write KEY=VALUE"):
        _deploy(argv, capsys)


def test_deploy_takes_every_run_setting(capsys):
    """The documented deploy commands set processors, models and the Ray address: each lands in every
    deployment's settings."""
    argv = [
        "deploy", "--input", "s3://raw/corpus/date={date}/", "--out", "s3://processed/corpus",
        "--tasks", "lid,ner", "--ner-model", "s3://models/ner-xlmr",
        "--ray-address", "ray://xlmflow-head-svc:10001", "--print-yaml",
    ]  # fmt: skip
    doc = yaml.safe_load(_deploy(argv, capsys))
    for d in doc["deployments"]:
        settings = d["parameters"]["settings"]
        assert settings["ray_address"] == "ray://xlmflow-head-svc:10001", d["name"]
        assert [p["type"] for p in settings["processors"]] == ["lid", "ner"], d["name"]
        assert "s3://models/ner-xlmr" in str(settings["processors"][1]), d["name"]
