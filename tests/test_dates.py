"""A partition date becomes part of paths and object keys: every command and flow takes only
YYYY-MM-DD, refuses anything else with exit 2 before touching storage, and writes nothing."""

from __future__ import annotations

import logging
import os

import pytest

from xlmflow.errors import ConfigError

HOSTILE = [
    "2026-11-01/../../../esc",
    "2026-11-01/x",
    "../2026-11-01",
    "2026-13-01",
    "2026-02-30",
    "",
    "20261101",  # Python reads it as 2026-11-01: a second spelling of one partition
    "2026-W44-7",
    "2026-11-01\n",
    "２０２６-１１-０１",  # full-width digits
]


def _tree(root) -> set[str]:  # noqa: ANN001
    return {os.path.relpath(os.path.join(d, n), root) for d, ds, fs in os.walk(root) for n in ds + fs}


def test_check_date_canonical_or_config_error():
    import datetime as dt

    from xlmflow.ray_cluster.registry import make_settings
    from xlmflow.settings import check_date

    assert check_date("2026-11-01") == "2026-11-01"
    assert check_date(dt.date(2026, 11, 1)) == "2026-11-01"
    for bad in [*HOSTILE, None, 20261101, dt.datetime(2026, 11, 1, 12)]:
        with pytest.raises(ConfigError, match="is not a date: write YYYY-MM-DD"):
            check_date(bad)
    # the settings object, as flows and deployments build it
    with pytest.raises(ConfigError, match="date"):
        make_settings(inputs=("x",), out="/tmp/o", date="2026-11-01/../x")
    assert make_settings(inputs=("x",), out="/tmp/o", date="2026-11-01").date == dt.date(2026, 11, 1)
    # the library's entry points, where a date becomes a path
    from xlmflow import maintenance
    from xlmflow.read import read_partition

    with pytest.raises(ConfigError, match="is not a date"):
        maintenance.restore("/tmp/o", "2026-11-01/../../x", "r")
    with pytest.raises(ConfigError, match="is not a date"):
        read_partition("/tmp/o", "documents", "../2026-11-01")


def test_every_command_refuses_a_hostile_date_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from xlmflow.cli import main

    sample = os.path.join(os.path.dirname(__file__), "..", "examples", "udhr-sample.jsonl")
    root = tmp_path / "a" / "b" / "c"  # room for '..' to climb inside tmp_path
    out = root / "out"
    out.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    before = _tree(tmp_path)
    commands = {
        "history": lambda d: ["history", "--out", str(out), "--date", d],
        "restore": lambda d: ["restore", "--out", str(out), "--date", d, "--run", "x", "--lock-timeout", "0"],
        "lease show": lambda d: ["lease", "show", "--out", str(out), "--date", d],
        "lease break": lambda d: ["lease", "break", "--out", str(out), "--date", d],
        "backfill --start": lambda d: (
            ["backfill", "--input", "x/{date}", "--out", str(out), "--start", d] + ["--end", "2026-11-02"]
        ),
        "run": lambda d: ["run", sample, "--out", str(out), "--date", d],
        "backfill --end": lambda d: (
            ["backfill", "--input", "x/{date}", "--out", str(out), "--start"] + ["2026-11-01", "--end", d]
        ),
    }
    root_handlers = list(logging.getLogger().handlers)
    try:
        for name, args in commands.items():
            for bad in HOSTILE:
                rc = main(args(bad))
                err = capsys.readouterr().err.strip().splitlines()
                assert rc == 2, (name, bad, rc, err)
                assert len(err) == 1 and err[0].startswith("xlmflow: configuration error: "), (name, bad, err)
                assert "YYYY-MM-DD" in err[0], err
                assert _tree(tmp_path) == before, (name, bad, _tree(tmp_path) - before)
        for run in ("../../../esc", "a/b", "..", ""):  # the run id of a restore is a path segment too
            rc = main(
                ["restore", "--out", str(out), "--date", "2026-11-01", "--run", run, "--lock-timeout", "0"]
            )
            err = capsys.readouterr().err.strip().splitlines()
            assert rc == 2 and len(err) == 1 and "is not a run id" in err[0], (run, rc, err)
            assert _tree(tmp_path) == before
    finally:  # main() sets up logging on this test's stderr and silences it after a failure
        logging.getLogger().handlers[:] = root_handlers
        logging.disable(logging.NOTSET)


def test_flows_refuse_a_hostile_date(prefect_harness, tmp_path):
    from xlmflow.flows.backfill import backfill_flow
    from xlmflow.flows.corpus import corpus_flow
    from xlmflow.flows.daily import daily_flow

    inp = tmp_path / "in" / "x.jsonl"
    inp.parent.mkdir()
    inp.write_text('{"id": "1", "text": "a document"}\n')
    out = tmp_path / "a" / "b" / "out"
    before = _tree(tmp_path)
    job = {"out": str(out), "tasks": "lid"}
    bad = "2026-11-01/../../../esc"
    with pytest.raises(ConfigError, match="is not a date"):
        corpus_flow(inputs=[str(inp)], settings=job, date=bad)
    with pytest.raises(ConfigError, match="is not a date"):
        daily_flow(input_template=str(tmp_path / "in" / "{date}"), settings=job, date=bad)
    with pytest.raises(ConfigError, match="is not a date"):
        backfill_flow(
            input_template=str(tmp_path / "in" / "{date}"), settings=job, start=bad, end="2026-11-02"
        )
    assert _tree(tmp_path) == before
