"""Runs on a Ray cluster that `ray start` made, as an operator deploys one: a head and a second node
(its own CPUs and a custom resource), joined with `--ray-address auto` from a node and with Ray Client
from a process that is not one; a run without an address leaves such a cluster alone.

One cluster serves the whole module. Its processes are ours: they are stopped by pid at the end,
never with `ray stop`, which would stop every Ray of this user (the suite's own included).
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from tests.conftest import free_port
from xlmflow import reaper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "examples", "udhr-sample.jsonl")
CLI = [sys.executable, "-m", "xlmflow.cli"]
RAY = os.path.join(os.path.dirname(sys.executable), "ray")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux only)")

# what a cluster looks like from a driver: its nodes, resources, live actors and placement groups
STATE = """
import json, sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
from ray._private import state
print(json.dumps({
    "nodes": sorted(n["NodeID"] for n in ray.nodes() if n["Alive"]),
    "total": ray.cluster_resources(),
    "available": ray.available_resources(),
    "actors": sorted(a["ActorID"] for a in state.actors().values() if a["State"] != "DEAD"),
    "pgs": sorted(k for k, p in ray.util.placement_group_table().items() if p["state"] != "REMOVED"),
}))
"""

# `ray start` as another Ray or Python would run it: what it records in the GCS is what drivers check
PATCHED_RAY = """
import sys, ray._private.utils as u
u.compute_version_info = lambda: {!r}
from ray.scripts.scripts import main
sys.argv[0] = "ray"
main()
"""


# on the head's Python path: once for each marker file, the Ray Client proxy's start of a per-client
# server ends as it does when the fork crashes on a busy head (the process is gone at once)
FAIL_ONCE_HOOK = """
import os, sys, threading, time

def _patch():
    for _ in range(6000):
        proxier = sys.modules.get("ray.util.client.server.proxier")
        if proxier is not None and hasattr(proxier, "ProxyManager"):
            break
        time.sleep(0.01)
    else:
        return
    start = proxier.ProxyManager.start_specific_server

    def start_once_crashed(self, client_id, job_config):
        started = start(self, client_id, job_config)
        try:
            os.unlink(os.environ["XJ_CLIENT_SERVER_FAILS"])
        except OSError:
            return started
        proc = self._get_server_for_client(client_id).process_handle_future.result()
        proc.process.kill()
        proc.process.wait()
        return False

    proxier.ProxyManager.start_specific_server = start_once_crashed

with open("/proc/self/cmdline", "rb") as f:
    if b"--mode=proxy" in f.read() and os.environ.get("XJ_CLIENT_SERVER_FAILS"):
        threading.Thread(target=_patch, daemon=True).start()
"""


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "RAY_ADDRESS"}
    env.pop("XLMFLOW_FAULTS", None)
    return env | {"PREFECT_SERVER_ANALYTICS_ENABLED": "false"} | extra


class Cluster:
    def __init__(self) -> None:
        # short: Ray's unix sockets live under it; RAY_TMPDIR=base makes base/ray Ray's default
        self.base = tempfile.mkdtemp(prefix="xj", dir="/tmp")
        self.temp = os.path.join(self.base, "ray")
        self.port, self.client_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Ray's token authentication, as a deployment keeps it: every process of the cluster and every
        # driver that joins it reads this token
        self.token = os.path.join(self.base, "auth_token")
        with open(self.token, "w") as f:
            f.write(secrets.token_hex(32))
        self.env = _env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=self.token)
        self.hooks = os.path.join(self.base, "hooks")
        os.makedirs(self.hooks)
        with open(os.path.join(self.hooks, "sitecustomize.py"), "w") as f:
            f.write(FAIL_ONCE_HOOK)
        self.client_server_fails = os.path.join(self.base, "client-server-fails")

    def start(self, worker_node: bool = True, versions: tuple[str, str] | None = None) -> None:
        """A head (1 CPU, Ray Client port) and a node (2 CPUs, a custom resource). With `versions`
        (Ray, Python) the head is a real one that records those in its GCS, as another install would."""
        env = self.env | {"RAY_TMPDIR": self.base}
        ray = [RAY]
        if versions:
            ray = [sys.executable, "-c", PATCHED_RAY.format(versions)]
        head = [*ray, "start", "--head", "--port", str(self.port), "--num-cpus", "1", "--temp-dir", self.temp]
        head += ["--ray-client-server-port", str(self.client_port), "--include-dashboard=false"]
        head += ["--disable-usage-stats"]
        hook = {"PYTHONPATH": self.hooks, "XJ_CLIENT_SERVER_FAILS": self.client_server_fails}
        subprocess.run(head, env=env | hook, check=True, capture_output=True, timeout=120)
        if not worker_node:
            return
        node = [RAY, "start", "--address", self.address, "--num-cpus", "2"]
        node += ["--resources", json.dumps({"xlmflow_worker": 1}), "--disable-usage-stats"]
        subprocess.run(node, env=env, check=True, capture_output=True, timeout=120)

    def state(self) -> dict:
        p = subprocess.run(
            [sys.executable, "-c", STATE, self.address],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 0, p.stderr[-2000:]
        return json.loads(p.stdout.strip().splitlines()[-1])

    def settled(self, before: dict, timeout: float = 20) -> dict:
        """The state once the cluster is back to `before` (resources return a moment after a run)."""
        t0 = time.monotonic()
        while True:
            now = self.state()
            if now == before or time.monotonic() - t0 > timeout:
                return now
            time.sleep(1)

    def client_server_logs(self) -> str:
        """The tails of the head's Ray Client server logs (the proxy's and each client's own)."""
        tails = []
        for path in sorted(glob.glob(os.path.join(self.temp, "session_2*", "logs", "ray_client_server*"))):
            with open(path, errors="replace") as f:
                tails.append(f"\n--- {os.path.basename(path)}\n" + f.read()[-8000:])
        return "".join(tails)

    def stop(self) -> None:
        """Every process of this cluster: its services name our temp dir, the rest descend from them."""
        table = reaper._table()
        # Ray Client servers name neither the temp dir nor a live parent (`ray start` has exited): they
        # are found by the cluster address they serve
        roots = {pid for pid in table if self.temp in (cmd := _cmdline(pid)) or f":{self.port} " in cmd}
        procs = reaper._descendants(table, roots) | {pid: table[pid][1] for pid in roots}
        for pid, start in procs.items():
            reaper._signal(pid, start, signal.SIGKILL)
        shutil.rmtree(self.base, ignore_errors=True)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    try:
        c.start()
        yield c
    finally:
        c.stop()


def _run(out: str, env: dict, *extra: str) -> subprocess.Popen:
    argv = CLI + [
        "run",
        SAMPLE,
        "--out",
        out,
        "--date",
        "2026-11-04",
        "--tasks",
        "lid",
        "--actors",
        "1",
        *extra,
    ]
    return subprocess.Popen(
        argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.fixture
def runs():
    """Starts CLI runs; whatever is still running when the test ends (a failed one) is killed."""
    started: list[subprocess.Popen] = []
    yield lambda *a: started.append(_run(*a)) or started[-1]
    for p in started:
        if p.poll() is None:
            p.kill()
            p.communicate()


def _done(p: subprocess.Popen, timeout: float = 180) -> str:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, (out + err)[-4000:]
    return out + err


def _manifest(out: str) -> dict:
    from xlmflow.manifest import read_manifest

    m = read_manifest(out, "2026-11-04")
    assert m is not None
    return m


@pytest.mark.slow
def test_a_run_joins_with_auto_and_one_without_an_address_leaves_the_cluster_alone(cluster, runs, tmp_path):
    before = cluster.state()
    assert (
        len(before["nodes"]) == 2 and before["total"]["CPU"] == 3 and before["total"]["xlmflow_worker"] == 1
    )
    assert not before["actors"] and not before["pgs"]
    # on the cluster's host (where `ray start` recorded its address), side by side
    alone = runs(str(tmp_path / "alone"), cluster.env | {"RAY_TMPDIR": cluster.base})
    joined = runs(
        str(tmp_path / "joined"), cluster.env | {"RAY_TMPDIR": cluster.base}, "--ray-address", "auto"
    )
    log_alone, _ = _done(alone), _done(joined)

    assert "_system_config" not in log_alone
    assert f":{cluster.port}) is left alone: this run starts its own; pass --ray-address auto" in log_alone, (
        log_alone
    )
    assert set(_manifest(str(tmp_path / "alone"))["nodes"]["actors"]).isdisjoint(before["nodes"])
    # its own Ray kept its session in a directory of this user's, not in the cluster's
    assert glob.glob(os.path.join(cluster.base, f"xlmflow-ray-{os.getuid()}", "session_2*"))

    nodes = _manifest(str(tmp_path / "joined"))["nodes"]
    assert set(nodes["actors"]) <= set(before["nodes"]) and nodes["actors"]
    assert set(nodes["ingest"]) <= set(before["nodes"]) and nodes["ingest"]
    # as it found it: no actor or placement group left, every resource back
    assert cluster.settled(before) == before


@pytest.mark.slow
def test_a_run_through_ray_client_from_a_process_that_is_not_a_node(cluster, runs, tmp_path):
    before = cluster.state()
    address = f"ray://127.0.0.1:{cluster.client_port}"
    out = str(tmp_path / "client")
    # the head's server for this client dies at its start (as a crashed fork does): the run connects again
    open(cluster.client_server_fails, "w").close()
    p = runs(out, cluster.env, "--ray-address", address)
    stdout, stderr = p.communicate(timeout=180)
    assert p.returncode == 0, (stdout + stderr)[-3000:] + cluster.client_server_logs()
    assert not os.path.exists(cluster.client_server_fails)
    assert "failed to start a server process for this run (try 1 of 3); connecting again" in stderr, stderr
    nodes = _manifest(out)["nodes"]
    assert set(nodes["actors"]) <= set(before["nodes"]) and nodes["actors"]
    assert cluster.settled(before) == before


@pytest.mark.slow
def test_a_cluster_of_other_versions_is_refused_in_seconds_with_both_named(runs, tmp_path):
    import ray

    other = Cluster()
    try:
        other.start(worker_node=False, versions=("2.9.3", "3.10.14"))
        t0 = time.monotonic()
        p = runs(str(tmp_path / "o"), other.env, "--ray-address", other.address)
        _, err = p.communicate(timeout=120)
        secs = time.monotonic() - t0
    finally:
        other.stop()
    print(f"refused after {secs:.1f} s")
    assert p.returncode == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    here = ".".join(map(str, sys.version_info[:3]))
    assert last == (
        f"xlmflow: configuration error: the Ray cluster at {other.address} runs Ray 2.9.3 on Python 3.10.14, "
        f"this xlmflow Ray {ray.__version__} on Python {here}: run xlmflow where both versions match the cluster's"
    ), last
    assert secs < 10, secs
