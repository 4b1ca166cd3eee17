"""What `xlmflow run` starts before its flow: Prefect's temporary API (a real server process), and the
actors, unless the run will most likely have nothing to process."""

from __future__ import annotations

import os

import httpx
from prefect.settings import PREFECT_API_URL, temporary_settings

from xlmflow import local_api
from xlmflow.cli import _work_expected
from xlmflow.lease import PartitionLease
from xlmflow.manifest import manifest_uri
from xlmflow.ray_cluster.registry import make_settings
from xlmflow.storage import write_json


def test_temporary_api_answers_and_is_dropped_when_prefect_is_configured_elsewhere():
    api = local_api.LocalAPI()
    proc = api.proc
    try:
        url = api.wait(120)
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        # below the CLI, level with Ray's workers: its start must not hold back the actors' model loads
        assert os.getpriority(os.PRIO_PROCESS, proc.pid) >= local_api.NICENESS
        # nothing else configured (as in a fresh CLI process, not this session's harness): the run uses it
        with temporary_settings(updates={PREFECT_API_URL: None}):
            assert local_api.settle(api) is api
        # a profile or prefect.toml naming a server: runs go there, and ours is stopped
        with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
            assert local_api.settle(api) is None
        assert proc.poll() is not None and api.proc is None
    finally:
        api.stop()


def test_actors_start_early_only_when_the_run_will_process_something(tmp_path):
    out = str(tmp_path / "out")
    day = "2026-11-01"
    s = make_settings(inputs=("in.jsonl",), out=out, date=day)
    assert _work_expected(s)
    assert not os.path.exists(out)  # looking did not create the output's folders
    with PartitionLease(out, day, "other-run", ttl=60).acquire(5):  # another run is at it: we will wait
        assert not _work_expected(s)
    assert _work_expected(s)  # released
    write_json(manifest_uri(out, day), {"date": day, "run_id": "r1"})
    assert not _work_expected(s)  # committed: a plain rerun does nothing
    assert _work_expected(make_settings(inputs=("in.jsonl",), out=out, date=day, force=True))
