"""Inputs that change after a commit are reported (exit 3), never silently ignored; empty inputs commit
and say so. Real CLI runs on the session's shared Ray and Prefect server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from xlmflow.manifest import read_manifest

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "udhr-sample.jsonl")
CLI = [sys.executable, "-m", "xlmflow.cli", "run"]
DATE = "2026-11-06"
pytestmark = pytest.mark.slow


def _run(env, *args):
    return subprocess.run(
        CLI + list(args) + ["--date", DATE, "--actors", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_changed_inputs_exit_3_and_leave_the_partition(tmp_path, cli_env):
    src = tmp_path / "in"
    src.mkdir()
    lines = open(SAMPLE, encoding="utf-8").read().splitlines()
    (src / "a.jsonl").write_text("\n".join(lines[:60]) + "\n", encoding="utf-8")
    out = str(tmp_path / "out")
    r = _run(cli_env, str(src), "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    before = read_manifest(out, DATE)
    assert [e["path"] for e in before["input_fingerprint"]] == [str(src / "a.jsonl")]
    assert before["input_fingerprint"][0]["size"] == (src / "a.jsonl").stat().st_size

    # what a run killed right after its commit leaves: its staging and a file of a superseded run
    staging = os.path.join(out, "_staging", f"date={DATE}", before["config_hash"], "shards")
    os.makedirs(staging)
    open(os.path.join(staging, "00000-left.arrow"), "wb").close()
    stray = os.path.join(out, "documents", f"date={DATE}", "part-deadbeef-00000.parquet")
    open(stray, "wb").close()
    # an unchanged rerun is a no-op that removes those; a late file and a grown file are reported
    assert "already committed" in _run(cli_env, str(src), "--out", out).stdout
    assert not os.path.exists(os.path.join(out, "_staging", f"date={DATE}")) and not os.path.exists(stray)
    (src / "b.jsonl").write_text("\n".join(lines[60:]) + "\n", encoding="utf-8")
    with open(src / "a.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "late", "text": "Ein spät angekommener Satz."}) + "\n")
    files_before = sorted(p for p in os.listdir(os.path.join(out, "documents", f"date={DATE}")))
    r = _run(cli_env, str(src), "--out", out)
    assert r.returncode == 3, r.stderr[-3000:]
    msg = r.stderr.strip().splitlines()[-1]
    assert f"added {src / 'b.jsonl'}" in msg and f"changed {src / 'a.jsonl'}" in msg and "--force" in msg
    assert "Traceback" not in r.stderr
    assert read_manifest(out, DATE) == before
    assert sorted(os.listdir(os.path.join(out, "documents", f"date={DATE}"))) == files_before
    # (--force recomputing a committed partition: tests/test_flow.py, tests/test_lease_cli.py)


def test_empty_input_commits_and_says_so(tmp_path, cli_env):
    src = tmp_path / "empty.jsonl"
    src.write_text("", encoding="utf-8")
    out = str(tmp_path / "out")
    r = _run(cli_env, str(src), "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "committed empty" in r.stdout
    m = read_manifest(out, DATE)
    assert m["empty"] is True and m["counts"]["input_rows"] == 0 and "empty" in m["note"]
