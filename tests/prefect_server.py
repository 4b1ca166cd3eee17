"""A real Prefect server (SQLite under a temp PREFECT_HOME) and a `process` worker, as subprocesses.

`prefect_stack(tmp)` starts both and always stops them (process groups, so the worker's flow-run
children go too). PREFECT_API_URL is only ever set in the subprocesses' environment and, for
in-process clients, inside `stack.settings()`: other tests in the same pytest process are untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
POOL = "xlmflow"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    url: str  # http://127.0.0.1:PORT (the UI); the API is url + "/api"
    home: Path
    env: dict[str, str]
    logs: dict[str, Path] = field(default_factory=dict)
    cache: dict[str, object] = field(default_factory=dict)  # results tests share (one partition run)

    @property
    def api_url(self) -> str:
        return self.url + "/api"

    @contextlib.contextmanager
    def settings(self) -> Iterator[None]:
        """Point in-process Prefect clients at this server, for the duration of the block only."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.api_url}):
            yield

    def log_tail(self, name: str, n: int = 4000) -> str:
        p = self.logs.get(name)
        return p.read_text(errors="replace")[-n:] if p and p.exists() else ""


def _env(home: Path, api_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT="false",
        # the scheduler and the worker poll every few seconds instead of every 60 / 10 s
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",
        PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS="1",
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_HEARTBEAT_SECONDS="5",
        PREFECT_LOGGING_LEVEL="INFO",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        RAY_USAGE_STATS_ENABLED="0",
        TOKENIZERS_PARALLELISM="false",
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    return env


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    # a new session: stopping the group also ends the flow-run processes the worker started
    return subprocess.Popen(
        args, env=env, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90.0, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"prefect server exited ({proc.returncode}):\n{log.read_text()[-3000:] if log else ''}"
            )
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url + "/api/health", timeout=2) as r:
                if json.loads(r.read()) is True:
                    return
        time.sleep(0.5)
    raise TimeoutError(f"prefect server not healthy after {timeout}s")


def prefect_cli(
    stack: Stack, *args: str, env: dict[str, str] | None = None, timeout: float = 120.0
) -> subprocess.CompletedProcess:
    """Run `prefect ARGS` against the stack's server (from the project root, where prefect.yaml lives)."""
    return subprocess.run(
        [str(VENV_BIN / "prefect"), "--no-prompt", *args],
        env={**stack.env, **(env or {})},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextlib.contextmanager
def prefect_stack(tmp: Path, worker: bool = True, extra_env: dict[str, str] | None = None) -> Iterator[Stack]:
    """Server + (optionally) a worker on pool `xlmflow`; both stopped on exit, also on failure."""
    home = tmp / "prefect-home"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    stack = Stack(url=url, home=home, env={**_env(home, url + "/api"), **(extra_env or {})})
    procs: list[subprocess.Popen] = []
    try:
        stack.logs["server"] = tmp / "server.log"
        server = _spawn(
            [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stack.env,
            stack.logs["server"],
        )
        procs.append(server)
        wait_healthy(url, server, log=stack.logs["server"])
        if worker:
            with stack.settings():
                from xlmflow.flows.deploy import ensure_work_pool

                ensure_work_pool(POOL)
            stack.logs["worker"] = tmp / "worker.log"
            procs.append(
                _spawn(
                    [str(VENV_BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process"],
                    stack.env,
                    stack.logs["worker"],
                )
            )
        yield stack
    finally:
        for p in reversed(procs):  # worker first, so it does not see the server vanish mid-run
            _stop(p)


# ---- helpers shared by the server and browser tests --------------------------------------------------------------
CORPUS = ROOT / "tests" / "data" / "parallel.jsonl"


def write_partition(raw: Path, date: str, n: int, offset: int = 0) -> Path:
    """A tiny JSONL partition raw/date=DATE/part-0.jsonl of n UDHR paragraphs (ids made unique per date)."""
    lines = CORPUS.read_text(encoding="utf-8").splitlines()[offset : offset + n]
    d = raw / f"date={date}"
    d.mkdir(parents=True, exist_ok=True)
    docs = [{**json.loads(x), "id": f"{date}-{i}"} for i, x in enumerate(lines)]
    (d / "part-0.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in docs), encoding="utf-8")
    return d


def flow_runs_named(stack: Stack, names: list[str]) -> list:
    """Flow runs of the server whose name is one of `names`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with stack.settings(), get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=names)))


def ensure_partition_run(stack: Stack, tmp_path_factory) -> object:  # noqa: ANN001
    """One finished `corpus-2026-11-01` run of the partition deployment (5 docs), made once per stack."""
    if "partition_run" in stack.cache:
        return stack.cache["partition_run"]
    from prefect.deployments import run_deployment

    from xlmflow.flows.deploy import deploy_all

    base = tmp_path_factory.mktemp("partition-run")
    write_partition(base / "raw", "2026-11-01", 5)
    with stack.settings():
        names = deploy_all(
            input_template=str(base / "raw" / "date={date}"), settings={"out": str(base / "out")}, cron=None
        )
        fr = run_deployment(
            names["partition"],
            timeout=300,
            poll_interval=1,
            parameters={
                "inputs": [str(base / "raw" / "date=2026-11-01")],
                "date": "2026-11-01",
            },
        )
    stack.cache["partition_run"] = fr
    return fr
