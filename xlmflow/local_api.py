"""The temporary Prefect API of a run without PREFECT_API_URL, started as the CLI's first step.

Prefect starts this same server itself (`SubprocessASGIServer`: uvicorn over its server app, UI off)
when a flow runs with no API URL, but only once the flow starts, and after importing its server
package into the calling process (6-7 CPU-s on a 2-core machine) just to build the command line, so
nothing else happens meanwhile. Started here, before Prefect is even imported, the server comes up
while the CLI starts Ray and the actors and imports Prefect; the flow then runs against it under
`temporary_settings`, as against any server. The command and environment are Prefect's own (prefect 3.9); `xlmflow.reaper` stops the
server if the CLI is killed.

It listens on 127.0.0.1 alone and runs in a session of its own: Ctrl-C in the terminal (SIGINT to the
whole process group) reaches the CLI, which then finishes with the server still there to record the
flow run's end, instead of both going down at once. If the server dies while a flow runs, the run
stops at once (`xlmflow.interrupt.stop`) rather than retrying its API for minutes.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

from xlmflow import interrupt
from xlmflow.errors import FatalError

PORT_IN_USE = 3  # uvicorn's exit status when it cannot bind
# Ray runs its workers, our model actors, at niceness 15: at 0, the server's start (7 CPU-s of imports
# and services) would come first on a small machine and delay the actors' model loads; at their
# niceness both get an equal share, and the CLI, Ray's own daemons and the user's other work still
# come first. Its API calls stay prompt: it is idle when not answering one.
NICENESS = 15


class LocalAPI:
    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self._unwatched = threading.Event()  # the server's end no longer stops the run
        self._spawn()
        atexit.register(self.stop)

    def _spawn(self) -> None:
        self.port = _free_port()
        # Prefect's own environment for it; the settings it reads from files, it reads itself
        env = {
            **os.environ,
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
        }
        app_dir = os.path.dirname(os.path.dirname(importlib.util.find_spec("prefect").origin))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", app_dir, "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
             "--log-level", "error", "--lifespan", "on"],
            env=env,
            start_new_session=True,
        )  # fmt: skip
        with contextlib.suppress(OSError):  # after the fork, not in it: the CLI may have threads by now
            os.setpriority(os.PRIO_PROCESS, self.proc.pid, max(NICENESS, os.getpriority(os.PRIO_PROCESS, 0)))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def wait(self, timeout: float) -> str:
        """Block until the API answers; its URL."""
        # lazy: only this path needs it; the CLI starts without it
        import httpx

        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                code = self.proc.poll()
                if code == PORT_IN_USE:  # the port was taken between our probe and its bind
                    self._spawn()
                elif code is not None:
                    raise FatalError(
                        f"Prefect's temporary API server exited with status {code} before answering; run "
                        "`prefect server start` to see why, or set PREFECT_API_URL to a running server"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/health").status_code == 200:
                        return self.url
                time.sleep(0.1)
        raise FatalError(
            f"Prefect's temporary API server did not answer within {timeout:.0f}s; raise "
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS on a busy machine, or set PREFECT_API_URL "
            "to a running server"
        )

    def watch(self) -> None:
        """Until `unwatch`, stop the run if the server exits before `stop` is called."""
        threading.Thread(target=self._watch, name="xlmflow-api-watch", daemon=True).start()

    def _watch(self) -> None:
        proc = self.proc
        while proc is not None and not self._unwatched.wait(0.5):
            code = proc.poll()
            if code is not None and not self._unwatched.is_set():
                how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
                interrupt.stop(
                    f"Prefect's temporary API server (pid {proc.pid}) {how} while the flow ran, so the run "
                    "could no longer record its progress"
                )
                return

    def unwatch(self) -> None:
        self._unwatched.set()

    def stop(self) -> None:
        self.unwatch()
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_early() -> LocalAPI | None:
    """Start the server unless PREFECT_API_URL is in the environment; before Prefect is imported, so
    Prefect's other settings sources (profiles, prefect.toml) are checked by `settle` afterwards."""
    return None if os.environ.get("PREFECT_API_URL") else LocalAPI()


def settle(api: LocalAPI | None) -> LocalAPI | None:
    """`api`, unless Prefect's settings say it must not be used: an API URL configured elsewhere (then
    runs go there), or ephemeral mode turned off (then Prefect's own error says what to set)."""
    # lazy: Prefect takes seconds to import; the CLI starts it after its checks
    from prefect.settings import get_current_settings

    s = get_current_settings()
    if api is not None and (s.api.url or not s.server.ephemeral.enabled):
        api.stop()
        return None
    return api


@contextlib.contextmanager
def serving(api: LocalAPI | None) -> Iterator[None]:
    """Run the body against `api` (once it answers); without one, against Prefect's own settings."""
    if api is None:
        yield
        return
    # lazy: Prefect takes seconds to import; the CLI starts it after its checks
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, get_current_settings, temporary_settings

    url = api.wait(get_current_settings().server.ephemeral.startup_timeout_seconds)
    api.watch()
    # stopped at exit, as Prefect stops its own: after its log and event workers have drained. It serves
    # no UI, so no "View at" link is printed for it (an empty UI URL, as for Prefect's own)
    try:
        with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_UI_URL: ""}):
            yield
    finally:
        api.unwatch()  # the flow is over: its end is recorded, or the run fails for its own reason


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
