"""Named fault points: where tests stop, crash or fail a run from outside, and nowhere else.

Production code marks a point with one call, `faults.point(NAME, key=...)`. Nothing happens unless the
environment variable XLMFLOW_FAULTS names a JSON control file that exists (the cost otherwise is one
environment lookup). The file is read at every call, so a test may write or remove it while a run (and
its Ray workers, which inherit the variable) is going.

The control file maps a point name to one rule:

    {"shard": {"prefix": "001-00001", "action": "hang", "marker": "/tmp/hung", "seconds": 300},
     "before_commit": {"action": "pause", "gate": "/tmp/gate"}}

A rule applies when the call's key starts with "prefix" (no prefix: every call), or equals "key".

Points:
- "before_commit" (flows.corpus): a run with every shard done, just before its commit.
- "shard", key = shard id (ray_cluster.actor): an actor about to process a shard.
- "task", key = the function's name (tasks run by ray_cluster.task_runner: "read_split",
  "reduce_ids", "reduce_content", "write_part") and "process_shard" (ray_cluster.actor).

Actions:
- "pause": while the file "gate" exists, wait there (at most "seconds", default 600); "gate".reached is
  created on arrival, so a test knows the run is there. A warning names the point.
- "exit": the first caller (the one that creates "marker") ends its process at once with os._exit(1),
  as an OOM kill or a lost node would; later callers pass.
- "raise": every matching call touches "marker" and raises OSError, as storage without credentials.
- "hang": the first caller writes its Ray node id to "marker" and sleeps "seconds" (default 120), so a
  test can take its node down; later callers pass.
"""

from __future__ import annotations

import json
import logging
import os
import time

ENV = "XLMFLOW_FAULTS"

log = logging.getLogger(__name__)


def point(name: str, key: str = "") -> None:
    """A fault point; does nothing unless the control file named by XLMFLOW_FAULTS has a rule for it."""
    ctl = os.environ.get(ENV)
    if not ctl:
        return
    rule = _rule(ctl, name, key)
    if rule is not None:
        _ACTIONS[rule["action"]](rule, f"{name} {key}".strip())


def _rule(ctl: str, name: str, key: str) -> dict | None:
    try:
        with open(ctl) as f:
            rule = json.load(f).get(name)
    except FileNotFoundError:
        return None
    if rule is None or not key.startswith(rule.get("prefix", "")):
        return None
    if "key" in rule and rule["key"] != key:
        return None
    return rule


def _pause(rule: dict, where: str) -> None:
    gate = rule["gate"]
    if not os.path.exists(gate):
        return
    log.warning("fault point %s: paused until %s is removed", where, gate)
    open(gate + ".reached", "a").close()
    deadline = time.monotonic() + rule.get("seconds", 600)
    while os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)


def _exit(rule: dict, where: str) -> None:
    if _first(rule["marker"], ""):
        os._exit(1)


def _raise(rule: dict, where: str) -> None:
    open(rule["marker"], "a").close()
    raise OSError(f"injected storage failure at {where}")


def _hang(rule: dict, where: str) -> None:
    if _first(rule["marker"], _node_id()):
        time.sleep(rule.get("seconds", 120))


def _first(marker: str, text: str) -> bool:
    """Creates the marker with `text`; False when another caller created it first."""
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return True


def _node_id() -> str:
    try:
        import ray  # lazy: only a hang rule needs it

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    except Exception:  # noqa: BLE001 - outside Ray
        return ""


_ACTIONS = {"pause": _pause, "exit": _exit, "raise": _raise, "hang": _hang}
