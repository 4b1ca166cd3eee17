"""Nothing a run started outlives it: not after SIGKILL of the driver, and never anything that is not its own.

The process tree is recorded before the kill: orphans are re-parented, so listing the driver's children
afterwards would prove nothing. A process is the same one only with the same pid and start time.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from xlmflow import reaper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux only)")


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def tree(root: int) -> dict[int, tuple[int, str]]:
    """pid -> (start time, command line) of every live descendant of root."""
    table = reaper._table()
    return {pid: (start, cmdline(pid)) for pid, start in reaper._descendants(table, {root}).items()}


def alive(recorded: dict[int, tuple[int, str]]) -> dict[int, str]:
    table = reaper._table()
    return {pid: cmd for pid, (start, cmd) in recorded.items() if reaper._alive(table, pid, start)}


def wait_gone(recorded: dict, timeout: float) -> float | None:
    """Seconds until none of `recorded` is alive, or None if some still are after `timeout`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if not alive(recorded):
            return time.monotonic() - t0
        time.sleep(0.1)
    return None


def kill_all(recorded: dict) -> None:
    for pid, (start, _) in recorded.items():
        reaper._signal(pid, start, signal.SIGKILL)


@contextlib.contextmanager
def sentinel():
    """A process that is not the driver's: it must survive everything here."""
    p = subprocess.Popen(["sleep", "300"])
    try:
        yield p
    finally:
        p.kill()
        p.wait()


# A driver that starts the watchdog and a child with a grandchild, says READY, and exits on a line of
# stdin (a normal exit that forgot its children) unless it is killed first.
DRIVER = textwrap.dedent(
    """
    import subprocess, sys, time
    from xlmflow import reaper
    reaper.start()
    subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300; wait"])
    time.sleep(1.2)  # two looks of the watchdog
    print("READY", flush=True)
    sys.stdin.readline()
    """
)


def start_driver() -> tuple[subprocess.Popen, dict]:
    p = subprocess.Popen(
        [sys.executable, "-c", DRIVER],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert p.stdout.readline().strip() == b"READY"
    recorded = tree(p.pid)
    cmds = [cmd for _, cmd in recorded.values()]
    assert sum(c == "sleep 300" for c in cmds) == 2, cmds
    assert any("reaper" in c for c in cmds), cmds  # the watchdog goes too, once it is done
    return p, recorded


@pytest.mark.parametrize("end", ["sigkill", "normal exit"])
def test_the_drivers_descendants_go_with_it_and_nothing_else(end):
    with sentinel() as other:
        p, recorded = start_driver()
        try:
            if end == "sigkill":
                p.kill()
            else:
                p.stdin.write(b"\n")
                p.stdin.flush()
            p.wait(timeout=30)
            took = wait_gone(recorded, 10)
            assert took is not None, f"still alive: {alive(recorded)}"
            assert other.poll() is None, "a process that was not the driver's was killed"
            assert b"stopped 3 processes it left: sh, sleep, sleep" in p.stderr.read()
        finally:
            kill_all(recorded)


def test_the_watchdog_of_a_clean_driver_just_exits():
    code = (
        "from xlmflow import reaper; reaper.start(); w = reaper._watchdog.pid; print(w, reaper._stat(w)[1])"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)
    pid, start = map(int, p.stdout.split())
    watchdog = {pid: (start, "watchdog")}
    assert wait_gone(watchdog, 5) is not None, "the watchdog outlived its driver"
    assert "stopped" not in p.stderr


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "no pidfd"])
def test_a_reused_pid_is_never_signalled(monkeypatch, pidfd):
    if not pidfd:  # as on Linux < 5.3

        def no_pidfd(pid):
            raise OSError(errno.ENOSYS, "pidfd_open")

        monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    with sentinel() as p:
        start = reaper._stat(p.pid)[1]
        reaper._signal(p.pid, start + 1, signal.SIGKILL)  # another process that had this pid
        time.sleep(0.2)
        assert p.poll() is None
        reaper._signal(p.pid, start, signal.SIGKILL)
        assert p.wait(timeout=5) == -signal.SIGKILL


def staging_success(out: str) -> bool:
    return bool(glob.glob(os.path.join(out, "_staging", "**", "_SUCCESS.json"), recursive=True))


def cli_env(**extra: str) -> dict:
    """The user's environment with no Prefect API and no Ray address: the run starts both itself."""
    drop = {"PREFECT_API_URL", "RAY_ADDRESS", "XLMFLOW_FAULTS"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    # on a busy shared machine the temporary server can take longer than Prefect's default wait
    env.update(
        PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120"
    )
    return {**env, **extra}


@contextlib.contextmanager
def processing_run(tmp_path, env: dict):
    """A real `xlmflow run`, yielded once its first shard is done (Prefect and Ray are both working)."""
    out = str(tmp_path / "out")
    argv = ["run", "examples/udhr-sample.jsonl", "--out", out, "--date", "2026-11-04"]
    argv += ["--actors", "1", "--shard-chars", "2000"]
    # not in a session or group of its own: the driver is killed alone, as `kill -9 PID` would
    driver = subprocess.Popen([sys.executable, "-m", "xlmflow.cli", *argv], cwd=ROOT, env=env)
    recorded: dict[int, tuple[int, str]] = {}
    try:
        t0 = time.monotonic()
        while not staging_success(out):
            assert driver.poll() is None, f"the run ended ({driver.returncode}) before it was killed"
            assert time.monotonic() - t0 < 300, "the run did not start processing within 300 s"
            time.sleep(0.2)
        recorded.update(tree(driver.pid))
        yield driver, recorded
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        kill_all(recorded)  # a failure here must not leak processes into the rest of the suite


def kill_and_wait(driver: subprocess.Popen, recorded: dict) -> float:
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    took = wait_gone(recorded, 20)
    assert took is not None, "still alive 20 s after the driver was killed:\n" + "\n".join(
        f"  {pid} {cmd}" for pid, cmd in alive(recorded).items()
    )
    return took


def is_prefect_server(cmd: str) -> bool:
    return "prefect.server.api.server:create_app" in cmd


def ray_binary(cmd: str, name: str) -> bool:
    return cmd.split(" ")[0].endswith("/" + name)


@pytest.mark.slow
def test_sigkilled_cli_run_leaves_no_prefect_server_or_ray_processes(tmp_path):
    with sentinel() as other, processing_run(tmp_path, cli_env()) as (driver, recorded):
        cmds = [cmd for _, cmd in recorded.values()]
        assert any(is_prefect_server(c) for c in cmds), cmds
        assert any(ray_binary(c, "raylet") for c in cmds), cmds
        assert any(ray_binary(c, "gcs_server") for c in cmds), cmds
        assert any(c.startswith("ray::") for c in cmds), cmds  # the agents and the actor's worker

        took = kill_and_wait(driver, recorded)
        print(f"{len(recorded)} processes of the run; all gone {took:.1f} s after SIGKILL")
        assert other.poll() is None, "a process that was not the driver's was killed"


@pytest.mark.slow
def test_sigkilled_cli_run_on_an_existing_ray_cluster_leaves_that_cluster_alone(tmp_path, ray_local):
    # this session's Ray plays the existing cluster: its services are ours (pytest's), not the driver's
    services = {
        pid: (start, cmd)
        for pid, (start, cmd) in tree(os.getpid()).items()
        # workers come and go with jobs; the services must stay
        if ray_binary(cmd, "raylet") or ray_binary(cmd, "gcs_server") or cmd.endswith("Agent")
    }
    assert any(ray_binary(c, "raylet") for _, c in services.values()), services
    env = cli_env(RAY_ADDRESS=ray_local.get_runtime_context().gcs_address)

    with processing_run(tmp_path, env) as (driver, recorded):
        cmds = [cmd for _, cmd in recorded.values()]
        assert any(is_prefect_server(c) for c in cmds), cmds
        assert not any(ray_binary(c, "raylet") for c in cmds), cmds  # it started no Ray of its own

        took = kill_and_wait(driver, recorded)
        print(f"{len(recorded)} processes of the run; all gone {took:.1f} s after SIGKILL")
        time.sleep(2)
        assert alive(services) == {p: c for p, (_, c) in services.items()}, "the cluster lost a service"
        assert ray_local.cluster_resources().get("CPU") == 2
