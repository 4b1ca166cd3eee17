"""Storage failures met through delta-rs (object_store), whose errors are plain OSErrors with coloured
text: the CLI still says "storage error" with what to check, on one clean line."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.fault_proxy import fault_proxy
from xlmflow import delta_schema, schemas

CLI = [sys.executable, "-m", "xlmflow.cli"]


def _history(out: str, endpoint: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {
        "AWS_ENDPOINT_URL": endpoint
    }
    return subprocess.run(
        CLI + ["history", "--out", out, "--date", "2026-11-01"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _last_line(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 1, p.stderr[-3000:]
    assert "\x1b" not in p.stderr, repr(p.stderr[-3000:])
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    lines = p.stderr.strip().splitlines()
    assert lines[-1].startswith("xlmflow: error: "), lines
    return lines[-1]


def test_delta_rs_storage_errors_are_storage_errors_on_one_clean_line(moto_server, s3_bucket):
    out = f"{s3_bucket}/x"
    delta_schema.ensure_table(out, "documents", schemas.DOCUMENTS)  # history lists it, then opens it
    with fault_proxy(moto_server) as proxy:
        # what delta-rs reads of the table's log (s3fs lists OUT by prefix queries, which pass)
        proxy.fail(500, method="GET", path=r"/_delta_log/")
        last = _last_line(_history(out, proxy.endpoint))
        assert proxy.hits > 1  # delta-rs retried before giving up
    assert last.startswith("xlmflow: error: storage error after retries: "), last
    assert "Generic S3 error: " in last and "500 Internal Server Error" in last, last
    assert "AWS_ENDPOINT_URL" in last and "rerun the same command" in last, last
    # a bucket that does not exist, as delta-rs reports it
    last = _last_line(_history("s3://no-such-bucket-xlmflow/x", moto_server))
    assert "bucket no-such-bucket-xlmflow does not exist or is not reachable; create it or fix --out" in last
