"""Runs on a Ray cluster of several nodes (ray.cluster_utils.Cluster: a head without CPUs and two worker
nodes, all on this machine) through `xlmflow run --ray-address`: split tasks and actors run on both
workers, losing a worker node mid-run loses and duplicates nothing, and losing the head ends the run
with an error in bounded time after which a rerun resumes."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import CORPUS, FAULTS_FILE, write_faults
from xlmflow.manifest import read_manifest

CLI = [sys.executable, "-m", "xlmflow.cli", "run"]
DATE = "2026-11-05"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("mn") / "docs.jsonl"
    with open(CORPUS, encoding="utf-8") as f, open(path, "w", encoding="utf-8") as out:
        for r in itertools.islice(map(json.loads, f), 2500):
            out.write(
                json.dumps({"id": f"{r['id']}:{r['lang']}", "text": r["text"]}, ensure_ascii=False) + "\n"
            )
    return str(path)


def _cluster(workers: int = 2):
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0})
    _forget_address()
    for _ in range(workers):
        c.add_node(num_cpus=2)
    c.wait_for_nodes()
    return c


def _forget_address() -> None:
    """Cluster writes its address where a bare ray.init() looks first; the session's other runs start
    or join their own Ray, never this one."""
    from ray._private.utils import get_ray_address_file

    with contextlib.suppress(FileNotFoundError):
        os.remove(get_ray_address_file(None))


@pytest.fixture(scope="module")
def cluster():
    import ray

    # a second Ray cluster on this machine breaks object transfers between the first one's workers
    # (OwnerDiedError on ray.put objects): the session's Ray is stopped here, and started again by
    # the next test that wants it
    ray.shutdown()
    c = _cluster()
    yield c
    c.shutdown()
    _forget_address()


@pytest.fixture
def cli_env(prefect_stack) -> dict:
    """The session's Prefect server, no Ray of the session (the runs join the test's cluster)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "RAY_ADDRESS"}
    return env | {"PREFECT_API_URL": prefect_stack.api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def _env(cli_env: dict) -> dict:
    return cli_env | {"XLMFLOW_FAULTS": FAULTS_FILE}


def _args(corpus: str, out: str, address: str) -> list[str]:
    return [corpus, "--out", out, "--date", DATE, "--ray-address", address, "--actors", "2",
            "--split-mb", "0.15", "--dedup-buckets", "3", "--shard-chars", "60000"]  # fmt: skip


def _docs(out: str) -> list[tuple]:
    """The committed documents, as any engine reads them (DuckDB over the pinned table version)."""
    from tests.conftest import duck

    rows = duck(out, "documents", DATE).sql("select doc_id, lang, source_row from documents").fetchall()
    return sorted(rows)


def _workers(c) -> set[str]:  # noqa: ANN001
    return {n.node_id for n in c.worker_nodes}


@pytest.mark.slow
def test_work_spreads_over_workers_and_a_lost_node_loses_nothing(cluster, cli_env, corpus, tmp_path):
    """One run on two worker nodes; the first actor to reach shard 001-00001 stops there and its node is
    removed. The run must still commit exactly the rows of a clean ingest of the same input (the
    reference is the same split tasks and reducers, run from this process), each with a language."""
    import ray

    from tests.staged_ingest import ingest
    from xlmflow.ray_cluster.registry import make_settings

    env = _env(cli_env)
    ray.init(address=cluster.address)
    try:
        ref = ingest(
            make_settings(
                inputs=[corpus],
                out=str(tmp_path / "ref"),
                split_bytes=int(0.15 * 1024 * 1024),
                dedup_buckets=3,
            )
        )
    finally:
        ray.shutdown()
    want = sorted(zip(ref.table["doc_id"].to_pylist(), ref.table["source_row"].to_pylist(), strict=True))
    assert len(want) > 2000
    # the first actor to reach shard 001-00001 stops there, and its node is removed
    marker = tmp_path / "hung"
    write_faults(
        FAULTS_FILE, shard={"prefix": "001-00001", "action": "hang", "marker": str(marker), "seconds": 300}
    )
    lossy = str(tmp_path / "lossy")
    try:
        proc = subprocess.Popen(CLI + _args(corpus, lossy, cluster.address), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        deadline = time.time() + 240
        while not (marker.exists() and marker.read_text()) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert marker.exists(), proc.communicate()[1][-3000:]
        both = _workers(cluster)
        victim = next(n for n in cluster.worker_nodes if n.node_id == marker.read_text())
        t0 = time.time()
        cluster.remove_node(victim, allow_graceful=False)
        _, err = proc.communicate(timeout=300)
        print(f"node removed: the run finished {time.time() - t0:.1f}s later")
    finally:
        os.remove(FAULTS_FILE)
    assert proc.returncode == 0, err[-3000:]
    m = read_manifest(lossy, DATE)
    assert m["ingest"]["splits"] > 2
    # split tasks and actors ran on both workers (the lost one before it went), nothing on the head
    assert (set(m["nodes"]["ingest"]), set(m["nodes"]["actors"])) == (both, both)
    # nothing read on the head; writers (after the loss) ran on the survivor, or on the head when aimed at
    # the lost node before Ray marked it dead (soft placement: Ray runs the task elsewhere)
    assert cluster.head_node.node_id not in m["nodes"]["ingest"]
    survivor = both - {victim.node_id}
    assert survivor <= set(m["nodes"]["writers"]) <= survivor | {cluster.head_node.node_id}
    got = _docs(lossy)
    assert sorted((d, r) for d, _, r in got) == want  # none lost, none twice
    assert all(lang for _, lang, _ in got)
    c = m["counts"]
    assert (c["input_rows"], c["documents"], c["rejects"]) == (ref.input_rows, len(want), len(ref.rejects))
    assert not m["shards"]["failed"]


@pytest.mark.slow
def test_head_loss_fails_in_bounded_time_and_the_rerun_resumes(cluster, cli_env, corpus, tmp_path):
    """Runs after the node-loss test, on what is left of the module's cluster, whose head it kills."""
    env = _env(cli_env) | {
        "RAY_gcs_rpc_server_reconnect_timeout_s": "5",
        "XLMFLOW_FAULTS": write_faults(
            tmp_path / "faults.json", before_commit={"action": "pause", "gate": str(tmp_path / "gate")}
        ),
    }
    (tmp_path / "gate").touch()  # the run stops before its commit, with every shard done
    out = str(tmp_path / "out")
    proc = subprocess.Popen(CLI + _args(corpus, out, cluster.address) + ["--actors", "1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and "fault point before_commit" not in _peek(proc):
        time.sleep(0.5)
    t0 = time.time()
    cluster.head_node.kill_all_processes(check_alive=False, allow_graceful=False)
    _, err = proc.communicate(timeout=120)
    took = time.time() - t0
    err = getattr(proc, "_peeked", "") + err
    print(f"head killed: the run exited {proc.returncode} after {took:.1f}s")
    assert proc.returncode != 0 and took < 60, (proc.returncode, took, err[-2000:])
    assert "GCS" in err, err[-2000:]
    assert read_manifest(out, DATE) is None

    second = _cluster(workers=1)
    try:
        env.pop("XLMFLOW_FAULTS")
        p = subprocess.run(CLI + _args(corpus, out, second.address) + ["--actors", "1"], env=env,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    finally:
        second.shutdown()
        _forget_address()
    assert p.returncode == 0, p.stderr[-3000:]
    assert "already done" in p.stderr  # finished shards were not redone
    m = read_manifest(out, DATE)
    assert m["counts"]["input_rows"] == m["counts"]["documents"] + m["counts"]["rejects"] > 2000


def _peek(proc: subprocess.Popen) -> str:
    """What the run has logged so far (stderr is read without blocking)."""
    import fcntl

    fd = proc.stderr.fileno()  # type: ignore[union-attr]
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    try:
        chunk = proc.stderr.read() or ""  # type: ignore[union-attr]
    except (BlockingIOError, TypeError):
        chunk = ""
    proc._peeked = getattr(proc, "_peeked", "") + chunk  # type: ignore[attr-defined]
    return proc._peeked  # type: ignore[attr-defined]


def test_a_local_out_with_nodes_elsewhere_is_refused():
    from xlmflow.ray_cluster.cluster import foreign_out_message

    assert foreign_out_message("/data/out", {"10.0.0.5"}, "10.0.0.5") is None  # every node is this machine
    msg = foreign_out_message("/data/out", {"10.0.0.5", "10.0.0.7"}, "10.0.0.5")
    assert msg and "10.0.0.7" in msg and "s3://" in msg and "--shared-out" in msg
