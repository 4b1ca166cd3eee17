"""A Delta table's log read as files: its commits, their metadata, checkpoints, and log cleanup.

The run-time reads (the conflict check before a commit, the debris check, the read-back of a commit
whose answer was lost) start from the last checkpoint, so they cost the same after years of commits.
Old log entries are removed by `xlmflow vacuum` only (cleanup_log), keeping the versions manifests pin.
"""

from __future__ import annotations

import json
import time

import pyarrow.parquet as pq

from xlmflow import storage

PARTITION = "date"
LOG_DIR = "_delta_log"
META_KEY = "xlmflow"  # commitInfo field holding this project's commit metadata (a JSON string)
READ_BACK_ATTEMPTS = 4  # reads of a commit whose answer was lost (0.5 + 1 + 2 s of backoff)


def last_checkpoint(out: str, name: str) -> int | None:
    """The version of the table's last checkpoint (`_delta_log/_last_checkpoint`); None: none yet."""
    uri = storage.join(out, name, LOG_DIR, "_last_checkpoint")
    try:
        return int(json.loads(storage.read_bytes(uri))["version"])
    except FileNotFoundError:
        return None


def _log_files(out: str, name: str) -> list[tuple[int, str]]:
    """(version, file name) of the table's versioned log files: commits, checkpoints, checksums."""
    fs, path = storage.fresh(storage.join(out, name, LOG_DIR))
    found = []
    for p in fs.ls(path, detail=False):
        base = p.rsplit("/", 1)[-1]
        head = base.split(".", 1)[0]
        if len(head) == 20 and head.isdigit():
            found.append((int(head), base))
    return sorted(found)


def oldest_version(out: str, name: str) -> int:
    """The oldest version of the table that can still be loaded (log cleanup removes older ones)."""
    files = _log_files(out, name)
    if any(v == 0 and b.endswith(".json") for v, b in files):
        return 0
    points = [v for v, b in files if ".checkpoint." in b]
    return min(points) if points else 0


def cleanup_log(out: str, name: str, keep_from: int | None, cutoff_ms: int) -> int:
    """Delete the log files of versions older than the newest checkpoint that is at most `keep_from`
    (None: no limit) and was committed before `cutoff_ms`; returns how many were deleted.

    Every version from that checkpoint on stays loadable (it and the commits after it are kept), so
    versions committed after the cutoff and every version from `keep_from` on can still be opened."""
    files = _log_files(out, name)
    start = None
    for v in sorted({v for v, b in files if b.endswith(".checkpoint.parquet")}, reverse=True):
        if keep_from is not None and v > keep_from:
            continue
        info = next((a["commitInfo"] for a in read_log_entry(out, name, v) if "commitInfo" in a), {})
        if int(info.get("timestamp") or 0) <= cutoff_ms:
            start = v
            break
    if start is None:
        return 0
    named = last_checkpoint(out, name)  # readers start there: never delete it, even if stale
    start = start if named is None else min(start, named)
    old = [storage.join(out, name, LOG_DIR, b) for v, b in files if v < start]
    storage.remove(old)
    return len(old)


def read_log_entry(out: str, name: str, version: int) -> list[dict]:
    """The actions of one commit (`_delta_log/<version>.json`), as the Delta protocol defines them."""
    raw = storage.read_bytes(storage.join(out, name, LOG_DIR, f"{version:020d}.json"))
    return [json.loads(line) for line in raw.decode().splitlines() if line.strip()]


def meta_of(info: dict) -> dict | None:
    """This project's metadata in a commitInfo; None for commits made by other tools."""
    try:
        return json.loads(info[META_KEY]) if info.get(META_KEY) else None
    except (TypeError, ValueError):
        return None


def commit_meta(entry: list[dict]) -> dict:
    """This project's metadata of a commit (empty for commits made by other tools)."""
    for action in entry:
        if (meta := meta_of(action.get("commitInfo") or {})) is not None:
            return meta
    return {}


def date_paths(entry: list[dict], date: str) -> list[str]:
    """The paths of `date` that a commit adds or removes."""
    return [
        act["path"]
        for action in entry
        if (act := action.get("add") or action.get("remove"))
        and (act.get("partitionValues") or {}).get(PARTITION) == date
    ]


def first_touching(out: str, name: str, date: str, first: int, last: int) -> tuple[int, dict] | None:
    for v in range(first, last + 1):
        entry = read_log_entry(out, name, v)
        if date_paths(entry, date):
            return v, commit_meta(entry)
    return None


def commit_outcome(out: str, name: str, version: int, commit_id: str) -> bool | None:
    """Whether `version` of the table is the commit `commit_id`: True (it is), False (another
    commit's), None (no such version). Read with a few bounded tries: the store that just lost an
    answer may still be flaky, and an unknown outcome must not be mistaken for a failure."""
    uri = storage.join(out, name, LOG_DIR, f"{version:020d}.json")
    for attempt in range(READ_BACK_ATTEMPTS):
        try:
            if not storage.exists(uri):
                return None
            return commit_meta(read_log_entry(out, name, version)).get("commit_id") == commit_id
        except FileNotFoundError:
            return None
        except Exception:  # noqa: BLE001 - transient; the last try's error propagates
            if attempt == READ_BACK_ATTEMPTS - 1:
                raise
            time.sleep(0.5 * 2**attempt)
    return None


def checkpoint_removes(out: str, name: str, version: int, date: str) -> set[str]:
    """Paths of `date` that the checkpoint at `version` holds as removed (tombstones still kept)."""
    meta = json.loads(storage.read_bytes(storage.join(out, name, LOG_DIR, "_last_checkpoint")))
    parts = meta.get("parts") if meta.get("version") == version else None
    names = (
        [f"{version:020d}.checkpoint.{i:010d}.{parts:010d}.parquet" for i in range(1, parts + 1)]
        if parts
        else [f"{version:020d}.checkpoint.parquet"]
    )
    paths = set()
    for n in names:
        fs, path = storage.fresh(storage.join(out, name, LOG_DIR, n))
        with fs.open(path, "rb") as fh:
            rows = pq.read_table(fh, columns=["remove"]).column("remove").to_pylist()
        for r in rows:
            if r and dict(r.get("partitionValues") or {}).get(PARTITION) == date:
                paths.add(r["path"])
    return paths


def logged_since_checkpoint(out: str, name: str, date: str, latest: int) -> tuple[set[str], set[str]]:
    """Paths of `date` the log records since (and in) its last checkpoint: tombstones the checkpoint
    keeps, paths the commits after it add or remove; and the run ids of those commits."""
    paths: set[str] = set()
    runs: set[str] = set()
    first = 0
    cp = last_checkpoint(out, name)
    if cp is not None:
        paths |= checkpoint_removes(out, name, cp, date)
        first = cp + 1
    for v in range(first, max(latest, cp if cp is not None else -1) + 1):
        entry = read_log_entry(out, name, v)
        paths.update(date_paths(entry, date))
        meta = commit_meta(entry)
        runs.update(r for r in [meta.get("run_id"), *(meta.get("partitions") or {}).values()] if r)
    return paths, runs
