"""A watchdog that stops the processes a run started once the run's driver is gone, even after SIGKILL.

With no PREFECT_API_URL, Prefect starts a temporary API server (uvicorn) as a child of the driver, and a
local `ray.init` starts raylet, GCS and agents. Killed hard, the driver cannot stop them, and some do not
notice on their own (measured: the Prefect server, Ray's dashboard and runtime-env agents). So a
separate process, started in its own session so that Ctrl-C or a kill of the driver's group spares it,
records the driver's descendants from /proc about twice a second. When the driver dies (its end of the
stdin pipe closes, or its pid is gone), it sends SIGTERM, then SIGKILL, to every recorded process still
alive, and to their own children. A process counts as the same only with the same start time, so a
reused pid is never hit, and only descendants of the driver are ever recorded: the processes of an
external Ray cluster (RAY_ADDRESS) are not ours and are never touched.

On a normal exit the driver has already shut Prefect and Ray down, so there is usually nothing left
to stop; anything still there would have been left over, and is stopped and reported on stderr.
Linux only (it reads /proc); elsewhere `start` does nothing. Standard library only, run by file path.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

INTERVAL_S = 0.5  # how often the driver's process tree is recorded
TERM_GRACE_S = 3.0  # time to exit after SIGTERM before SIGKILL
EXIT_GRACE_S = 2.0  # time the driver's processes get to end by themselves once it is gone

_watchdog: subprocess.Popen | None = None


def start() -> None:
    """Start the watchdog for this process (once; later calls do nothing)."""
    global _watchdog
    if _watchdog is not None or not sys.platform.startswith("linux"):
        return
    # -I -S: stdlib only, so neither the environment nor the working directory can break its start
    _watchdog = subprocess.Popen(
        [sys.executable, "-I", "-S", os.path.abspath(__file__), str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )


def _stat(pid: int) -> tuple[int, int, bytes] | None:
    """(parent pid, start time in clock ticks, state) from /proc/<pid>/stat; None when gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()  # the command name may hold spaces and parentheses
    return int(fields[1]), int(fields[19]), fields[0]


def proc_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; None when it is gone (or not on Linux)."""
    st = _stat(pid)
    return st[1] if st else None


def _table() -> dict[int, tuple[int, int, bytes]]:
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (st := _stat(int(name))) is not None:
            table[int(name)] = st
    return table


def _alive(table: dict, pid: int, start: int) -> bool:
    st = table.get(pid)
    return st is not None and st[1] == start and st[2] != b"Z"


def _descendants(table: dict, roots: set[int]) -> dict[int, int]:
    """pid -> start time of every live process below `roots` in `table`."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {}, list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found and table[child][2] != b"Z":
                found[child] = table[child][1]
                todo.append(child)
    return found


def _signal(pid: int, start: int, sig: int) -> None:
    """Signal pid only if it is still the process that started at `start`."""
    try:
        fd = os.pidfd_open(pid)  # holds the process: its pid cannot be reused between check and kill
    except ProcessLookupError:
        return
    except OSError:  # no pidfd before Linux 5.3: check, then kill, with a tiny window for reuse
        fd = None
    try:
        st = _stat(pid)
        if st is not None and st[1] == start:
            if fd is None:
                os.kill(pid, sig)
            else:
                signal.pidfd_send_signal(fd, sig)
    except OSError:
        pass
    finally:
        if fd is not None:
            os.close(fd)


def _survivors(known: dict[int, int]) -> dict[int, int]:
    """The live ones among `known` plus their live descendants (children started since the last look)."""
    table = _table()
    live = {p: s for p, s in known.items() if _alive(table, p, s)}
    return {**live, **_descendants(table, set(live))}


def reap(known: dict[int, int]) -> list[str]:
    """SIGTERM, then SIGKILL after a grace period, every live process of `known`; returns their names."""
    targets = _survivors(known)
    names = []
    for pid in targets:
        try:
            with open(f"/proc/{pid}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            pass
    for sig, wait_s in ((signal.SIGTERM, TERM_GRACE_S), (signal.SIGKILL, 2.0)):
        for pid, start in targets.items():
            _signal(pid, start, sig)
        deadline = time.monotonic() + wait_s
        while targets and time.monotonic() < deadline:
            time.sleep(0.1)
            targets = _survivors(targets)
    return names


def watch(driver: int) -> None:
    """Record the driver's descendants until it is gone, then stop those still running."""
    me = os.getpid()
    first = _stat(driver)
    if first is None:
        return
    known: dict[int, int] = {}
    eof_at = None
    while True:
        table = _table()
        if not _alive(table, driver, first[1]):
            break
        # forget the ones that ended, so a long run does not keep a list of every process it ever had
        known = {p: s for p, s in known.items() if _alive(table, p, s)}
        known.update(_descendants(table, {driver}))
        known.pop(me, None)
        if eof_at is None:
            ready = select.select([0], [], [], INTERVAL_S)[0]
            if ready and not os.read(0, 1024):
                eof_at = time.monotonic()
        else:
            # the pipe closed: the driver is exiting, so look often until its pid is gone (if it
            # somehow lives on without the pipe, back to the usual pace after a while)
            time.sleep(0.05 if time.monotonic() - eof_at < 2 else INTERVAL_S)
    # Ray's workers notice their raylet's end on their own within a moment of a normal exit: only
    # what is still there after that grace is stopped and reported
    deadline = time.monotonic() + EXIT_GRACE_S
    while known and time.monotonic() < deadline:
        time.sleep(0.1)
        known = _survivors(known)
    names = reap(known)
    if names:
        try:
            print(
                f"xlmflow: process {driver} is gone; stopped {len(names)} processes it left: "
                f"{', '.join(sorted(names))}",
                file=sys.stderr,
            )
        except OSError:  # the driver's terminal or pipe may be gone too
            pass


if __name__ == "__main__":
    watch(int(sys.argv[1]))
