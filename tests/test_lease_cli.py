"""One writer per partition, tested the way the data loss was found: real `xlmflow run` processes
started side by side on one output (a local directory and the moto S3 server), killed and stalled.

Runs share the session's Ray and Prefect server (`cli_env`). Overlap is forced, not left to timing:
the first run pauses before its commit while a gate file exists (XLMFLOW_TEST_PAUSE_BEFORE_COMMIT),
and the gate is only lifted once the others have logged that they wait for the lease.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from xlmflow import storage
from xlmflow.manifest import read_manifest
from xlmflow.read import read_partition

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "udhr-sample.jsonl")
CLI = [sys.executable, "-m", "xlmflow.cli", "run"]
DATE = "2026-11-05"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The bundled sample plus two bad rows, so both outputs (documents, rejects) have rows."""
    d = tmp_path_factory.mktemp("lease-in")
    src = d / "in.jsonl"
    with open(SAMPLE, encoding="utf-8") as f:
        body = f.read()
    src.write_text(body + '{"id": "bad-1", "text": ""}\nnot json\n', encoding="utf-8")
    return str(src)


class Run:
    """One `xlmflow run` subprocess with its combined output in a file."""

    def __init__(
        self, tmp, name: str, corpus: str, out: str, env: dict, *args: str, gate=None, **extra
    ) -> None:
        self.log = tmp / f"{name}.log"
        env = dict(env)
        if gate:
            env["XLMFLOW_TEST_PAUSE_BEFORE_COMMIT"] = str(gate)
        env.update(extra)
        self._fh = open(self.log, "w")  # noqa: SIM115 - closed in wait()
        cmd = CLI + [corpus, "--out", out, "--date", DATE, "--actors", "1", "--shard-chars", "4000", *args]
        self.p = subprocess.Popen(cmd, env=env, stdout=self._fh, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float = 240) -> None:
        deadline = time.time() + timeout
        while needle not in self.text():
            assert self.p.poll() is None, (
                f"exited {self.p.returncode} before {needle!r}:\n{self.text()[-3000:]}"
            )
            assert time.time() < deadline, f"no {needle!r} after {timeout}s:\n{self.text()[-3000:]}"
            time.sleep(0.1)

    def wait(self, timeout: float = 300) -> int:
        try:
            return self.p.wait(timeout)
        finally:
            self._fh.close()


def _rows(out: str) -> dict:
    return (
        {
            ds: sorted(
                json.dumps(r, sort_keys=True, default=str)
                for r in (read_partition(out, ds, DATE) or []).to_pylist()
            )
            for ds in ("documents", "rejects")
        }
        if read_manifest(out, DATE)
        else {}
    )


def _files_on_storage(out: str) -> set[str]:
    return {
        u
        for ds in ("documents", "rejects")
        for u in storage.list_files(storage.join(out, ds, f"date={DATE}"))
    }


def check_partition(out: str, reference: dict) -> dict:
    """The committed partition equals a clean run's, every listed file exists, and every other file is a
    superseded one some table version holds (kept for vacuum), never debris of an uncommitted run."""
    from tests.conftest import files_ever_committed

    m = read_manifest(out, DATE)
    assert m is not None
    listed = {storage.join(out, f["path"]) for fs in m["files"].values() for f in fs}
    assert all(storage.exists(u) for u in listed), "the manifest lists a file that is gone"
    ever = set().union(*(files_ever_committed(out, ds, DATE) for ds in ("documents", "rejects")))
    assert listed <= ever
    assert _files_on_storage(out) <= ever, "files no commit added are left in the partition"
    got = _rows(out)
    assert got == reference
    ids = [json.loads(r)["doc_id"] for r in got["documents"]]
    assert len(ids) == len(set(ids)), "duplicate documents"
    c = m["counts"]
    assert c["input_rows"] == c["documents"] + c["rejects"]
    return m


_REFERENCE: dict = {}


@pytest.fixture
def reference(corpus, tmp_path_factory, cli_env):
    """Rows of one clean, uninterrupted run (made once per module)."""
    if not _REFERENCE:
        tmp = tmp_path_factory.mktemp("lease-ref")
        out = str(tmp / "out")
        r = Run(tmp, "clean", corpus, out, cli_env)
        assert r.wait() == 0, r.text()[-3000:]
        _REFERENCE.update(_rows(out))
        assert len(_REFERENCE["documents"]) == 127 and len(_REFERENCE["rejects"]) == 2
    return _REFERENCE


@pytest.fixture
def out_root(s3_bucket):
    """S3 (conditional PUTs, server-side times): the harder of the two lease stores; the local one
    (flock, mtime, owner pid) is exercised by the Ctrl-C/kill and held-partition tests."""
    return s3_bucket + "/out"


def test_concurrent_runs_of_one_partition(out_root, corpus, reference, cli_env, tmp_path):
    """Two --force runs and a plain run of an uncommitted partition at once, while a reader loops over it:
    one run at a time commits, the plain run waits and then finds the partition committed, the reader
    never sees a half-written or mixed partition, and the last commit equals a clean run's rows."""
    gate = tmp_path / "gate"
    gate.touch()
    a = Run(tmp_path, "a", corpus, out_root, cli_env, "--force", gate=gate)
    a.wait_for("test pause before commit")
    b = Run(tmp_path, "b", corpus, out_root, cli_env, "--force")
    c = Run(tmp_path, "c", corpus, out_root, cli_env)
    b.wait_for("waiting for lease")
    c.wait_for("waiting for lease")
    assert read_manifest(out_root, DATE) is None  # a has not committed: the runs overlap
    stop, reads, errors = threading.Event(), [], []

    def reader() -> None:
        while not stop.is_set():
            try:
                t = read_partition(out_root, "documents", DATE)
                reads.append(t.num_rows if t is not None else None)
            except Exception as exc:  # noqa: BLE001 - the test asserts there are none
                errors.append(repr(exc))

    th = threading.Thread(target=reader)
    th.start()
    gate.unlink()
    rcs = [r.wait() for r in (a, b, c)]
    stop.set()
    th.join()
    assert rcs == [0, 0, 0], [r.text()[-2000:] for r in (a, b, c)]
    assert not errors, errors[:3]
    assert {n for n in reads if n is not None} == {127}, f"{len(reads)} reads, sizes {set(reads)}"
    assert "already committed" in c.text()  # it waited, then skipped the committed partition
    last = check_partition(out_root, reference)
    from xlmflow.history import runs_of

    runs = runs_of(out_root, DATE)  # both forced runs committed, one after the other
    assert len({r["run_id"] for r in runs if r["operation"] == "write"}) == 2, runs
    assert last["run_id"] == runs[-1]["run_id"]


def test_ctrl_c_releases_the_lease_and_a_killed_owner_is_taken_over(corpus, reference, cli_env, tmp_path):
    out = str(tmp_path / "out")
    gate = tmp_path / "gate"
    gate.touch()
    lease = [sys.executable, "-m", "xlmflow.cli", "lease"]

    def show() -> str:
        r = subprocess.run(
            lease + ["show", "--out", out, "--date", DATE], capture_output=True, text=True, env=cli_env
        )
        assert r.returncode == 0, r.stderr
        return r.stdout

    # Ctrl-C: exit 130, and the lease is released on the way out, not left to expire
    a = Run(tmp_path, "a", corpus, out, cli_env, gate=gate)
    a.wait_for("test pause before commit")
    assert f"pid {a.p.pid}" in show() and "held by" in show()
    a.p.send_signal(signal.SIGINT)
    assert a.wait() == 130, a.text()[-3000:]
    assert "interrupted" in a.text().strip().splitlines()[-1]
    assert "no lease" in show() and read_manifest(out, DATE) is None

    # SIGKILL: the owner's process is gone, so the next run need not wait for the lease to expire
    k = Run(tmp_path, "k", corpus, out, cli_env, gate=gate)  # resumes a's finished shards
    k.wait_for("test pause before commit")
    k.p.send_signal(signal.SIGKILL)
    k.wait()
    assert f"pid {k.p.pid}" in show() and read_manifest(out, DATE) is None
    t0 = time.monotonic()
    b = Run(tmp_path, "b", corpus, out, cli_env, "--lock-timeout", "60")
    assert b.wait() == 0, b.text()[-3000:]
    assert "took over the expired lease" in b.text()
    assert time.monotonic() - t0 < 120
    check_partition(out, reference)


def test_stalled_owner_cannot_commit_after_takeover(s3_bucket, corpus, reference, cli_env, tmp_path):
    """On S3, by the server's clock: the stalled run's lease expires, another run commits, and the
    stalled run, when it wakes, is refused its commit (exit 1) and leaves the partition as it was."""
    out = s3_bucket + "/out"
    gate = tmp_path / "gate"
    gate.touch()
    # the stalled run has a Ray of its own: its (stopped) driver keeps its actors, which would
    # otherwise hold the shared Ray's CPUs
    env_a = {k: v for k, v in cli_env.items() if k != "RAY_ADDRESS"}
    a = Run(tmp_path, "a", corpus, out, env_a, "--lease-ttl", "3", gate=gate)
    a.wait_for("test pause before commit")
    a.p.send_signal(signal.SIGSTOP)
    try:
        time.sleep(4.5)  # past the 3 s ttl: no heartbeat while stopped
        b = Run(tmp_path, "b", corpus, out, cli_env, "--lock-timeout", "60")
        assert b.wait() == 0, b.text()[-3000:]
        assert "took over the expired lease" in b.text()
    finally:
        a.p.send_signal(signal.SIGCONT)
    committed = check_partition(out, reference)
    gate.unlink()
    assert a.wait() == 1, a.text()[-3000:]
    assert "lost the lease" in a.text()
    assert "Traceback" not in a.text().split("xlmflow: ")[-1]
    after = check_partition(out, reference)
    assert after["run_id"] == committed["run_id"]


def test_held_partition_times_out_then_lease_break_frees_it(tmp_path, cli_env):
    from xlmflow.lease import PartitionLease, show

    out = str(tmp_path / "out")
    held = PartitionLease(out, DATE, "someone-else", ttl=3600).acquire(0)
    held._stop.set()  # a run elsewhere: no heartbeat from this process
    body = {**show(out, DATE).body, "host": "another-host"}
    held.backend.replace(body, held.token)
    # a run of that partition waits --lock-timeout, then says who holds it and how to free it
    r = subprocess.run(
        CLI + [SAMPLE, "--out", out, "--date", DATE, "--lock-timeout", "2"],
        capture_output=True,
        text=True,
        env=cli_env,
        timeout=300,
    )
    assert r.returncode == 1, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("xlmflow: error:") and "held by run someone-else (host another-host" in last
    assert "gave up after 2s (--lock-timeout)" in last and "xlmflow lease break" in last
    assert read_manifest(out, DATE) is None
    lease = [sys.executable, "-m", "xlmflow.cli", "lease"]
    r = subprocess.run(
        lease + ["show", "--out", out, "--date", DATE], capture_output=True, text=True, env=cli_env
    )
    assert "held by run someone-else (host another-host" in r.stdout
    r = subprocess.run(
        lease + ["break", "--out", out, "--date", DATE], capture_output=True, text=True, env=cli_env
    )
    assert r.returncode == 0 and "broke the lease of run someone-else" in r.stdout
    assert show(out, DATE) is None
