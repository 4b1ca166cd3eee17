"""Ctrl-C and SIGTERM, to the driver alone and to its whole process group (what a terminal and `kill --
-PGID` do), in each stage of a real `xlmflow run`: exit 130/143 within seconds, the lease released, no
process left, and a rerun that resumes to an uninterrupted run's output. Also: a run whose temporary
Prefect server dies stops at once, and nothing a local run starts listens outside loopback.

Each run is held inside one kind of task (XLMFLOW_TEST_PAUSE_TASK) so that the signal lands in that
stage for sure. The runs go side by side, a few at a time: one after the other they would take minutes.
Runs signalled as a group start their own Prefect server and Ray, as on a terminal; the others share
the session's Prefect server (a signal to the driver alone never reaches it) and start their own Ray
(the pause must reach its workers through their environment).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.test_orphans import alive, tree
from xlmflow import reaper
from xlmflow.lease import show
from xlmflow.manifest import read_manifest
from xlmflow.read import read_partition

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = str(ROOT / "examples" / "udhr-sample.jsonl")
DATE = "2026-11-07"
STAGE_TASK = {"ingest": "read_split", "process": "process_shard", "commit": "write_part"}
CONCURRENCY = 4  # runs at once: more only adds memory on 2 cores
STOP_WITHIN_S = 10.0
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")]


def _base_env(prefect_api: str | None) -> dict:
    drop = ("PREFECT_API_URL", "RAY_ADDRESS", "XLMFLOW_TEST_CRASH_FILE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(
        PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180"
    )
    if prefect_api:
        env["PREFECT_API_URL"] = prefect_api
    return env


def _reset_sigint(ignore: bool):  # noqa: ANN202
    # a child of a non-interactive shell's `&` ignores SIGINT; a terminal's foreground job does not
    return lambda: signal.signal(signal.SIGINT, signal.SIG_IGN if ignore else signal.SIG_DFL)


@dataclass
class Case:
    sig: str  # INT, TERM, or KILL-SERVER (the run's temporary Prefect server is killed)
    target: str  # pid, group, server
    stage: str
    tmp: Path
    prefect_api: str | None
    p: subprocess.Popen | None = None
    sent_at: float = 0.0
    secs: float | None = None
    rc: int | None = None
    tree: dict = field(default_factory=dict)
    listening: list = field(default_factory=list)
    grouped: list = field(default_factory=list)  # the run's processes in the driver's process group

    @property
    def name(self) -> str:
        return f"{self.sig}-{self.target}-{self.stage}"

    @property
    def out(self) -> str:
        return str(self.tmp / self.name / "out")

    @property
    def gate(self) -> Path:
        return self.tmp / self.name / "gate"

    @property
    def log(self) -> Path:
        return self.tmp / self.name / "log"

    def start(self) -> None:
        self.gate.parent.mkdir(parents=True)
        self.gate.touch()
        env = _base_env(self.prefect_api if self.target == "pid" else None)
        env["XLMFLOW_TEST_PAUSE_TASK"] = f"{STAGE_TASK[self.stage]}:{self.gate}"
        with open(self.log, "w") as fh:
            self.p = subprocess.Popen(
                [sys.executable, "-m", "xlmflow.cli", *run_args(self.out)],
                cwd=ROOT,
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_reset_sigint(ignore=self.target == "server"),
            )

    def reached(self) -> bool:
        return Path(f"{self.gate}.reached").exists()

    def hit(self) -> None:
        """Record the run's processes and sockets, then signal it."""
        self.tree = tree(self.p.pid)
        self.listening = listening(set(self.tree) | {self.p.pid})
        self.grouped = [cmd[:80] for pid, (_, cmd) in self.tree.items() if _pgid(pid) == self.p.pid]
        self.sent_at = time.monotonic()
        if self.target == "server":
            [server] = [pid for pid, (_, cmd) in self.tree.items() if "prefect.server.api.server" in cmd]
            os.kill(server, signal.SIGKILL)
            self.gate.unlink()  # the run goes on, without its server
        elif self.target == "group":
            os.killpg(self.p.pid, getattr(signal, f"SIG{self.sig}"))
        else:
            self.p.send_signal(getattr(signal, f"SIG{self.sig}"))

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def run_args(out: str) -> list[str]:
    return ["run", SAMPLE, "--out", out, "--date", DATE, "--actors", "1", "--shard-chars", "4000"]


def _address(hexaddr: str, v6: bool) -> tuple[str, int]:
    ip, port = hexaddr.split(":")
    raw = bytes.fromhex(ip)
    if v6:  # four little-endian 32-bit words
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
        return socket.inet_ntop(socket.AF_INET6, raw), int(port, 16)
    return socket.inet_ntop(socket.AF_INET, raw[::-1]), int(port, 16)


def listening(pids: set[int]) -> list[tuple[str, int, int, str]]:
    """(address, port, pid, command) of every TCP socket in LISTEN state that one of `pids` holds."""
    socks = {}
    for name, v6 in (("tcp", False), ("tcp6", True)):
        with open(f"/proc/net/{name}") as f:
            next(f)
            for line in f:
                parts = line.split()
                if parts[3] == "0A":  # TCP_LISTEN
                    socks[int(parts[9])] = _address(parts[1], v6)
    found = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and int(link[8:-1]) in socks:
                found.add((*socks[int(link[8:-1])], pid, cmd))
    return sorted(found)


def loopback(address: str) -> bool:
    return address in ("::1", "localhost") or address.startswith(("127.", "::ffff:127."))


def rows(out: str) -> dict:
    tables = {ds: read_partition(out, ds, DATE) for ds in ("documents", "rejects")}
    return {
        ds: sorted(json.dumps(r, sort_keys=True, default=str) for r in t.to_pylist())
        for ds, t in tables.items()
        if t is not None
    }


def drive(cases: list[Case], limit_s: float = 600) -> None:
    """Run the cases, CONCURRENCY at a time: start, wait for the stage, hit, wait for the exit."""
    todo, running = list(cases), []
    deadline = time.monotonic() + limit_s
    try:
        while todo or running:
            while todo and len(running) < CONCURRENCY:
                todo[0].start()
                running.append(todo.pop(0))
            for c in list(running):
                if not c.sent_at:
                    if c.reached():
                        c.hit()
                    else:
                        assert c.p.poll() is None, (
                            f"{c.name} exited {c.p.returncode} early:\n{c.text()[-3000:]}"
                        )
                elif c.p.poll() is not None or time.monotonic() - c.sent_at > 3 * STOP_WITHIN_S:
                    c.secs = round(time.monotonic() - c.sent_at, 1)
                    c.rc = c.p.poll()
                    running.remove(c)
            assert time.monotonic() < deadline, f"not done within {limit_s}s: {[c.name for c in running]}"
            time.sleep(0.05)
    finally:
        for c in cases:
            if c.p is not None and c.p.poll() is None:
                c.p.kill()
                c.p.wait()
            if c.gate.exists():
                c.gate.unlink()


def stop_runs(tmp_path: Path, prefect_api: str, targets: tuple[str, ...], server_case: bool) -> list[Case]:
    """Signal a run in each stage per signal and target; check every one of them; the cases."""
    cases = [
        Case(sig, target, stage, tmp_path, prefect_api)
        for stage in STAGE_TASK
        for sig in ("INT", "TERM")
        for target in targets
    ]
    if server_case:
        cases.append(Case("KILL", "server", "process", tmp_path, prefect_api))
    t0 = time.monotonic()
    drive(cases)
    print(f"{len(cases)} runs in {time.monotonic() - t0:.0f}s")
    for c in cases:
        print(f"{c.name}: exit {c.rc} after {c.secs}s, {len(c.tree)} processes")

    problems = []
    for c in cases:
        want = {"INT": 130, "TERM": 143, "KILL": 1}[c.sig]
        last = c.text().strip().splitlines()[-1] if c.text().strip() else ""
        if c.rc != want or c.secs > STOP_WITHIN_S:
            problems.append(
                f"{c.name}: exit {c.rc} after {c.secs}s (want {want} within {STOP_WITHIN_S}s): {last}"
            )
        elif not last.startswith("xlmflow: "):
            problems.append(f"{c.name}: last line {last!r}")
        if c.target == "server" and "Prefect's temporary API server" not in c.text():
            problems.append(f"{c.name}: the server's end is not named")
        if show(c.out, DATE) is not None:
            problems.append(f"{c.name}: the partition's lease is still held")
        # nothing the run started shares the terminal's process group: Ctrl-C reaches the driver alone
        if c.grouped:
            problems.append(f"{c.name}: in the driver's process group: {c.grouped}")
        bound = [x for x in c.listening if not loopback(x[0])]
        if bound:
            problems.append(f"{c.name}: listening outside loopback: {bound}")
    t = time.monotonic()
    while any(alive(c.tree) for c in cases) and time.monotonic() - t < 15:
        time.sleep(0.2)
    for c in cases:
        if alive(c.tree):
            problems.append(f"{c.name}: left running: {list(alive(c.tree).values())}")
            reaper.reap({pid: start for pid, (start, _) in c.tree.items()})
    assert not problems, "\n".join(problems)
    return cases


def test_signals_to_the_group_stop_a_run_in_every_stage_and_a_rerun_resumes(tmp_path, prefect_stack):
    """What a terminal's Ctrl-C and `kill -- -PGID` do; with nothing else in the group (checked), the
    driver alone gets the signal, as with a signal to its pid (the test below)."""
    api = prefect_stack.api_url
    cases = stop_runs(tmp_path, api, ("group",), server_case=True)
    group_run = next(c for c in cases if c.target == "group" and c.stage == "process")
    print("listening:", *(f"{a}:{port} {cmd}" for a, port, _, cmd in group_run.listening), sep="\n  ")
    assert any(x[3].endswith("raylet") for x in group_run.listening), group_run.listening
    assert any("prefect.server" in cmd for _, cmd in group_run.tree.values())

    # a run stopped in its commit resumes (its shards are done) and ends as an uninterrupted run does
    stopped = next(c for c in cases if c.name == "INT-group-commit")
    clean = str(tmp_path / "clean")
    env = _base_env(api)
    procs = [
        subprocess.Popen([sys.executable, "-m", "xlmflow.cli", *run_args(out)], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for out in (stopped.out, clean)
    ]  # fmt: skip
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-2000:] for o in outs]
    reference = rows(clean)
    assert len(reference["documents"]) == read_manifest(clean, DATE)["counts"]["documents"] > 0
    assert rows(stopped.out) == reference
    assert read_manifest(stopped.out, DATE)["counts"] == read_manifest(clean, DATE)["counts"]


def test_signals_to_the_driver_stop_a_run_in_every_stage(tmp_path, prefect_stack):
    stop_runs(tmp_path, prefect_stack.api_url, ("pid",), server_case=False)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None
