"""What a new user reads first: --version, the usage line, --help's placeholders, the end-of-run summary.

In-process (`main([...])`), no run started."""

from __future__ import annotations

import io
import re

import pytest

import xlmflow
from xlmflow.cli import build_parser, main
from xlmflow.tasks.report import SUMMARY_LANGS, print_summary


def _exit(capsys, argv: list[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out + out.err


def test_version(capsys):
    code, out = _exit(capsys, ["--version"])
    assert code == 0
    assert out.strip() == f"xlmflow {xlmflow.__version__}"


def test_usage_line_lists_every_subcommand(capsys):
    names = sorted(build_parser(["--help"])._subparsers._group_actions[0].choices)
    assert {"run", "backfill", "deploy", "models", "pairs"} <= set(names)
    # the top-level usage, as --help, a missing command and a bad option after a command print it
    for argv in (["--help"], [], ["run", "x.jsonl", "--out", "o", "--no-such-option"]):
        _, out = _exit(capsys, argv)
        usage = re.search(r"usage: xlmflow \[[^{]*\{([^}]*)\}", out, re.S)
        assert usage, (argv, out[:500])
        assert sorted(x.strip() for x in usage.group(1).split(",")) == names, (argv, usage.group(0))


def test_help_placeholders_say_what_a_value_is(capsys):
    code, out = _exit(capsys, ["run", "--help"])
    assert code == 0
    # argparse's fallback (the dest, JOB__TASKS) and words of the option's name (--actors ACTORS,
    # --max-inflight-per-actor ACTOR) say nothing about the value
    assert not re.search(r"--[\w.-]+ [A-Z_]*__[A-Z_]*", out), re.findall(r"--[\w.-]+ [A-Z_]*__\w*", out)
    placeholders = dict(re.findall(r"^\s+(--[\w.-]+) ([A-Z][A-Z_=]*)", out, re.M))
    expected = {
        "--tasks": "LIST",
        "--actors": "N",
        "--max-inflight-per-actor": "N",
        "--shard-retries": "N",
        "--lease-ttl": "SECONDS",
        "--actor-start-timeout": "SECONDS",
        "--split-mb": "MB",
        "--gpu-fraction": "FRACTION",
        "--ner-model": "MODEL",
        "--ray-address": "ADDRESS",
        "--proc": "NAME=TYPE",
        "--qe-target-lang": "LANG",
        "--model-cache": "DIR",
    }
    assert {k: placeholders.get(k) for k in expected} == expected
    # every number says its unit or that it is a count
    numeric = {"N", "SECONDS", "FRACTION", "MB"}
    words = {"OUT", "DATE", "LIST", "NAME=TYPE", "MODEL", "ADDRESS", "LANG", "DIR"}
    assert set(placeholders.values()) <= numeric | words, set(placeholders.values()) - numeric - words
    words |= {"TEMPLATE", "FLOW/DEPLOYMENT", "NAME", "CRON", "TZ", "KEY=VALUE"}
    for command in ("backfill", "deploy"):
        _, out = _exit(capsys, [command, "--help"])
        found = dict(re.findall(r"^\s+(--[\w.-]+) ([A-Z][A-Z_=/]*)", out, re.M))
        assert set(found.values()) <= numeric | words, (command, set(found.values()) - numeric - words)


def _manifest(langs: int) -> dict:
    return {
        "date": "2026-11-01",
        "status": "committed",
        "counts": {
            "input_rows": 1000,
            "documents": 990,
            "rejects": 10,
            "by_lang": {f"l{i:03d}": 1000 - i for i in range(langs)},
        },
        "files": {
            "documents": [{"rows": 600}, {"rows": 390}],
            "entities": [{"rows": 1234}],
            "embeddings": [],
        },
    }


def test_summary_names_every_language_or_counts_the_rest_and_every_dataset():
    few = io.StringIO()
    print_summary(_manifest(12), few)
    text = few.getvalue()
    assert all(f"l{i:03d}=" in text for i in range(12)), text
    assert "more" not in text
    assert "documents=990" in text and "entities=1234" in text and "embeddings=0" in text, text

    many = io.StringIO()
    print_summary(_manifest(SUMMARY_LANGS + 37), many)
    text = many.getvalue()
    assert f"languages ({SUMMARY_LANGS + 37})" in text
    assert sum(f"l{i:03d}=" in text for i in range(SUMMARY_LANGS + 37)) == SUMMARY_LANGS
    assert "and 37 more" in text, text
