"""Shared fixtures: a real moto S3 server, one local Ray per session, offline env defaults."""

from __future__ import annotations

import os
import socket

import pytest

# Offline, quiet defaults for every test process (and the Ray workers they start).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# UDHR paragraphs in 80 languages, kept in the repository (provenance in tests/data/README.md)
CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "parallel.jsonl")


def duck(out: str, dataset: str, date: str, con=None):  # noqa: ANN001, ANN201
    """The committed partition of `dataset` as DuckDB reads it: a view named `dataset` over the pyarrow
    dataset of the Delta table version the date's manifest pins (deltalake, not our own file listing)."""
    import duckdb
    from deltalake import DeltaTable

    from xlmflow import delta
    from xlmflow.read import arrow_filesystem, pinned_version

    version = pinned_version(out, dataset, date)
    assert version is not None, f"{dataset} of {date} is not committed in {out}"
    uri = delta.table_uri(out, dataset)
    dt = DeltaTable(uri, version=version, storage_options=delta.storage_options(uri))
    ds = dt.to_pyarrow_dataset(filesystem=arrow_filesystem(uri))  # no abort at exit: see there
    con = con or duckdb.connect()
    con.register(f"{dataset}_all", ds)
    con.sql(f"create or replace temp view {dataset} as select * from {dataset}_all where date = '{date}'")
    return con


def files_ever_committed(out: str, dataset: str, date: str) -> set[str]:
    """URIs of every file some version of the table holds for `date` (superseded ones included)."""
    from xlmflow import delta, storage

    table = delta.open_table(out, dataset)
    if table is None:
        return set()
    return {
        storage.join(out, dataset, f["path"])
        for v in range(table.version() + 1)
        for f in delta.partition_files(delta.open_table(out, dataset, v), date)
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """A real S3 endpoint: a moto server in its own process, which s3fs, pyarrow and delta-rs talk HTTP to.

    Not a thread of the test process: some delta-rs calls wait on HTTP while holding the GIL, and an
    in-process server could then never answer them.
    """
    import subprocess
    import sys
    import time
    import urllib.request

    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")  # noqa: SIM115 - lives for the session
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto server did not start (log: {log.name})") from None
            time.sleep(0.2)
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    proc.terminate()
    proc.wait(timeout=30)
    log.close()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_bucket(moto_server):
    """A fresh, empty bucket for one test; returns 's3://NAME'."""
    import uuid

    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_server).create_bucket(Bucket=name)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    return f"s3://{name}"


# The fault points' control file (xlmflow/faults.py) of in-process runs; set before any Ray starts so
# the worker processes inherit it. Harmless while the file does not exist.
FAULTS_FILE = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"xlmflow-faults-{os.getpid()}.json")
os.environ["XLMFLOW_FAULTS"] = FAULTS_FILE


def write_faults(path, **rules: dict) -> str:  # noqa: ANN001
    """Writes a fault control file, one rule per point name (see xlmflow/faults.py); returns its path."""
    import json

    with open(path, "w") as f:
        json.dump(rules, f)
    return str(path)


@pytest.fixture
def ray_local(moto_server):
    """A real local Ray (2 CPUs, no dashboard), started once and shared until a test needs another.

    Depends on moto_server so the S3 endpoint and credentials are in the environment before Ray starts
    its workers (they inherit the driver's environment at start, as on a real cluster's nodes).
    """
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False)
    return ray


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API for flow tests (a real local server, SQLite, started once)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def prefect_stack(tmp_path_factory):
    """A real Prefect server (temp SQLite) + a process worker on pool `xlmflow`; see tests/prefect_server.py."""
    from tests.prefect_server import prefect_stack as start

    with start(tmp_path_factory.mktemp("prefect-stack")) as stack:
        yield stack


@pytest.fixture
def cli_env(ray_local, prefect_stack):
    """Environment for `xlmflow` subprocesses that share this session's Ray and Prefect server.

    Each CLI run then skips the ~15 s temporary Prefect server and the Ray start-up; runs started side
    by side meet on the same services, as two deployments of one installation do.
    """
    from xlmflow.ray_cluster.pool import shutdown_pools

    # an actor pool left by an in-process flow test would hold the shared Ray's CPUs, and the
    # subprocesses' actors would wait for them forever
    shutdown_pools()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.pop("XLMFLOW_FAULTS", None)
    env.update(
        PREFECT_API_URL=prefect_stack.api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        RAY_ADDRESS=ray_local.get_runtime_context().gcs_address,
    )
    return env


def staged_docs(texts: list[str]):  # noqa: ANN201
    """Staged document rows (what a shard holds) for `texts`, ids d0, d1, ..."""
    import pyarrow as pa

    from xlmflow.schemas import STAGED_DOCS

    rows = [
        {
            "doc_id": f"d{i}",
            "text": t,
            "lang_hint": None,
            "n_chars": len(t),
            "source": "s",
            "source_row": i,
            "meta": "{}",
        }
        for i, t in enumerate(texts)
    ]
    return pa.Table.from_pylist(rows, schema=STAGED_DOCS)
