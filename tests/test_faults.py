"""The fault points (xlmflow/faults.py): inert without a control file, and each action as documented."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import write_faults
from xlmflow import faults


def test_points_do_nothing_without_a_control_file(tmp_path, monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)
    faults.point("shard", key="000-00001")
    monkeypatch.setenv(faults.ENV, str(tmp_path / "absent.json"))
    faults.point("shard", key="000-00001")


def test_raise_applies_to_the_matching_point_and_key_only(tmp_path, monkeypatch):
    marker = tmp_path / "raised"
    rule = {"prefix": "000-00002", "action": "raise", "marker": str(marker)}
    monkeypatch.setenv(faults.ENV, write_faults(tmp_path / "f.json", shard=rule))
    faults.point("shard", key="000-00001")
    faults.point("task", key="000-00002")
    assert not marker.exists()
    with pytest.raises(OSError, match="injected storage failure at shard 000-00002-x"):
        faults.point("shard", key="000-00002-x")
    assert marker.exists()


def test_pause_holds_until_the_gate_goes(tmp_path, monkeypatch):
    gate = tmp_path / "gate"
    gate.touch()
    rule = {"key": "read_split", "action": "pause", "gate": str(gate), "seconds": 0.3}
    monkeypatch.setenv(faults.ENV, write_faults(tmp_path / "f.json", task=rule))
    faults.point("task", key="read_splits")  # another name: no pause
    assert not (tmp_path / "gate.reached").exists()
    faults.point("task", key="read_split")  # held until its deadline, as the gate stays
    assert (tmp_path / "gate.reached").exists()
    gate.unlink()
    faults.point("task", key="read_split")  # no gate: passes


def test_exit_ends_the_first_caller_only(tmp_path):
    marker = tmp_path / "exited"
    env = os.environ | {
        faults.ENV: write_faults(tmp_path / "f.json", before_commit={"action": "exit", "marker": str(marker)})
    }
    code = "from xlmflow import faults; faults.point('before_commit'); print('passed')"
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert (first.returncode, first.stdout, second.returncode, second.stdout) == (1, "", 0, "passed\n")
    assert marker.exists()
