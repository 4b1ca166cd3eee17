"""How a run stops: on SIGINT (Ctrl-C) or SIGTERM, or when a helper process it started dies under it.

`install` makes both signals raise `Interrupted` in the main thread, wherever it waits (a Ray wait, a
Prefect API call, a sleep): the flow's `finally` releases the partition's lease on the way out, and the
CLI exits 128 + the signal's number (130, 143) with one `xlmflow:` line. `stop` ends the run the same
way from another thread (exit 1, with the reason), for a helper that died.

The way out gets GRACE_S: cleanup that waits on a service that is gone (Prefect retries its API calls
for a minute each) must not hold the terminal, so past it the process exits with the same status and
line, and xlmflow.reaper stops the processes the run started.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time

GRACE_S = 5.0
_RESUME = "rerun the same command to resume from finished shards"


class Interrupted(KeyboardInterrupt):
    """The run was told to stop: by signal `signum`, or by a failure (`reason`) found in another thread.

    A KeyboardInterrupt, so that no `except Exception` on the way (ours, Prefect's, Ray's) swallows it.
    """

    def __init__(self, signum: int, reason: str | None = None) -> None:
        super().__init__(reason or signal.Signals(signum).name)
        self.signum, self.reason = signum, reason


_stop: Interrupted | None = None
_raised = False
_reported = False
_ignore_sigint = False


def install() -> None:
    """Handle SIGINT and SIGTERM in this (the main) thread from now on.

    SIGINT that was ignored when the process started (a background job of a script) stays ignored;
    the handler is installed anyway, so that `stop` can wake the main thread with it.
    """
    global _ignore_sigint
    _ignore_sigint = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _handler)


def take_prefect_sigterm() -> None:
    """Have Prefect's flow engine install this module's handler where it would install its own.

    For a flow's duration Prefect swaps SIGTERM to a handler that raises its TerminationSignal, and
    sends the signal again to the previous handler once the crash is recorded. Raised inside a Ray
    wait, that exception comes out as a SystemError, so neither happens and the run ended with
    "unexpected error" (exit 1); a KeyboardInterrupt is one Ray and Prefect both pass on as such.
    """
    # lazy: Prefect takes seconds to import; the CLI starts it after its checks
    from prefect.utilities import engine

    if hasattr(engine, "_prefect_sigterm_handler"):  # prefect 3.9's name
        engine._prefect_sigterm_handler = _handler
    else:  # theirs stays in place: SIGTERM then ends a run as "unexpected" (exit 1), not 143
        logging.getLogger(__name__).warning(
            "this Prefect version has no engine._prefect_sigterm_handler; SIGTERM may end runs with exit 1"
        )


def _handler(signum: int, _frame: object) -> None:
    global _stop, _raised
    if _stop is None:
        if signum == signal.SIGINT and _ignore_sigint:
            return
        _stop = Interrupted(signum)
        _start_deadline()
    if _raised:  # the way out has begun: a second Ctrl-C must not cut the lease's release short
        return
    _raised = True
    raise _stop


def stop(reason: str) -> None:
    """End the run from any thread: the main thread raises `Interrupted` with `reason` (exit 1)."""
    global _stop
    if _stop is not None:
        return
    _stop = Interrupted(signal.SIGINT, reason)
    _start_deadline()
    # to the main thread itself: a signal the kernel hands to another thread would not wake its sleep
    with contextlib.suppress(OSError):
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)


def outcome() -> tuple[int, str] | None:
    """(exit status, message after 'xlmflow: ') once the run was told to stop; None before."""
    if _stop is None:
        return None
    if _stop.reason:
        return 1, f"error: {_stop.reason}; the run stopped, {_RESUME}"
    if _stop.signum == signal.SIGINT:
        return 130, f"interrupted; {_RESUME}"
    return 128 + _stop.signum, f"terminated by {signal.Signals(_stop.signum).name}; {_RESUME}"


def mark_reported(quiet: bool = True) -> None:
    """The `xlmflow:` line is out: the deadline must not print a second one. On the way out of a stopped
    run, `quiet` sends what the process still writes to stderr (Ray's core worker logs the tasks it
    drops) to /dev/null, so that line stays the last one."""
    global _reported
    _reported = True
    if _stop is not None and quiet:
        with contextlib.suppress(OSError):
            sys.stderr.flush()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)


def _start_deadline() -> None:
    def run() -> None:
        time.sleep(GRACE_S)
        code, msg = outcome()
        try:
            if not _reported:  # on a line of its own: a library may have left one unfinished
                print(f"\nxlmflow: {msg} (stopped after {GRACE_S:.0f}s of cleanup)", file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)

    threading.Thread(target=run, name="xlmflow-stop-deadline", daemon=True).start()
