"""The temporary Prefect API a run starts for itself before Prefect is imported (real server process)."""

from __future__ import annotations

import httpx
from prefect.settings import PREFECT_API_URL, temporary_settings

from xlmflow import local_api


def test_temporary_api_answers_and_is_dropped_when_prefect_is_configured_elsewhere():
    api = local_api.LocalAPI()
    proc = api.proc
    try:
        url = api.wait(120)
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        assert local_api.settle(api) is api  # nothing else configured: the run uses it
        # a profile or prefect.toml naming a server: runs go there, and ours is stopped
        with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
            assert local_api.settle(api) is None
        assert proc.poll() is not None and api.proc is None
    finally:
        api.stop()
