"""The CLI as a user runs it: exit codes and messages, and SIGKILL at a random point then resume."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import duck
from xlmflow.manifest import read_manifest

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "udhr-sample.jsonl")
CLI = [sys.executable, "-m", "xlmflow.cli"]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.pop("XLMFLOW_TEST_CRASH_FILE", None)
    return env | {"PREFECT_SERVER_ANALYTICS_ENABLED": "false"} | extra


def test_missing_input_is_a_clear_error(tmp_path):
    p = subprocess.run(
        CLI + ["run", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert p.returncode != 0
    assert "nope.jsonl" in p.stderr and "Traceback" not in p.stderr


def test_unknown_task_is_a_config_error(tmp_path):
    p = subprocess.run(
        CLI + ["run", SAMPLE, "--out", str(tmp_path / "o"), "--tasks", "lid,bogus"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert p.returncode == 2
    assert "bogus" in p.stderr and "available" in p.stderr


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_output(tmp_path, cli_env):
    import json

    from tests.conftest import CORPUS

    # the whole UDHR corpus (4k paragraphs, ids made unique per language) in ~80 shards: seconds of work
    src = tmp_path / "udhr.jsonl"
    with open(CORPUS, encoding="utf-8") as f, open(src, "w", encoding="utf-8") as g:
        for line in f:
            r = json.loads(line)
            g.write(
                json.dumps({"id": f"{r['id']}:{r['lang']}", "text": r["text"]}, ensure_ascii=False) + "\n"
            )
    out_a, out_b = str(tmp_path / "killed"), str(tmp_path / "clean")
    args = ["run", str(src), "--date", "2026-11-02", "--shard-chars", "20000", "--actors", "1"]
    staging = os.path.join(out_a, "_staging", "date=2026-11-02")
    # the runs share the session's Ray and Prefect server (the kill of a run's own Ray and temporary
    # Prefect server is tested in test_orphans); its own process group is killed, as a crash would
    p = subprocess.Popen(
        CLI + args + ["--out", out_a],
        env=cli_env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 400
    done = []
    while time.time() < deadline and p.poll() is None:
        done = [f for _, _, fs in os.walk(staging) for f in fs if f == "_SUCCESS.json"]
        if len(done) >= 2:
            break
        time.sleep(0.05)
    assert p.poll() is None, "the run finished before it could be killed; lower --shard-chars"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert read_manifest(out_a, "2026-11-02") is None  # not committed
    resumed = subprocess.run(
        CLI + args + ["--out", out_a], env=cli_env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    clean = subprocess.run(
        CLI + args + ["--out", out_b], env=cli_env, capture_output=True, text=True, timeout=600
    )
    assert clean.returncode == 0, clean.stderr[-2000:]

    def rows(out, ds):
        return sorted(duck(out, ds, "2026-11-02").sql(f"select * from {ds}").fetchall())

    assert rows(out_a, "documents") == rows(out_b, "documents")
    assert rows(out_a, "rejects") == rows(out_b, "rejects")
    ma, mb = read_manifest(out_a, "2026-11-02"), read_manifest(out_b, "2026-11-02")
    assert ma["counts"] == mb["counts"]
    # no leftover files of the killed attempt in the committed partition
    listed = {os.path.join(out_a, f["path"]) for fs in ma["files"].values() for f in fs}
    on_disk = {os.path.join(d, f) for d, _, fs in os.walk(out_a) for f in fs if f.endswith(".parquet")}
    assert on_disk == listed
