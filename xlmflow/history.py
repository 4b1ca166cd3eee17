"""A partition's runs: which committed it (from the tables' commit metadata), which is current, and
bringing an earlier one back (restore). The tables are those on disk under OUT, whatever processors
wrote them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from xlmflow import delta, delta_log, storage
from xlmflow.errors import ConfigError, FatalError
from xlmflow.manifest import manifest_dates, manifest_uri, read_manifest, run_manifest_uri


def runs_of(out: str, date: str) -> list[dict]:
    """The runs committed for `date`, oldest first, from the tables' commit metadata.

    Each: run_id, operation (write, restore, migrate), tables {name: version}, counts, time, current
    (the manifest pins exactly these versions), complete (the run's manifest was written). A
    migration that rewrote one date's files counts as a commit of the run whose files it rewrote.
    """
    runs: dict[tuple, dict] = {}
    for name in delta.table_names(out):
        for h in delta.history(out, name):
            _add_commit(runs, name, h, date)
    current = read_manifest(out, date)
    pinned = (current or {}).get("tables")
    rows = []
    for r in sorted(runs.values(), key=lambda r: r["ms"]):
        r["time"] = dt.datetime.fromtimestamp(r.pop("ms") / 1000, dt.UTC).isoformat(timespec="seconds")
        r["current"] = pinned == r["tables"]
        r["complete"] = r["current"] or storage.exists(run_manifest_uri(out, date, r["run_id"]))
        if r["counts"] is None and r["complete"]:
            src = current if r["current"] else storage.read_json(run_manifest_uri(out, date, r["run_id"]))
            r["counts"] = (src or {}).get("counts")
        rows.append(r)
    return rows


def _add_commit(runs: dict[tuple, dict], name: str, h: dict, date: str) -> None:
    """Count commit `h` of table `name` into the runs of `date` it belongs to, if any."""
    op = h.get("operation", "write")
    if op == "migrate" and h.get("date") == date:
        # a rewrite of one date's files (same rows, another file layout) stays its run's commit
        own = [r for k, r in runs.items() if k[1] == h.get("run_id") and name in r["tables"]]
        if own:
            own[-1]["tables"][name] = h["version"]
            return
    if op == "migrate":
        run_id = (h.get("partitions") or {}).get(date)
    elif h.get("date") == date:
        run_id = h.get("run_id")
    else:
        return
    if not run_id:
        return
    new = {"run_id": run_id, "operation": op, "tables": {}, "counts": h.get("counts"), "ms": h["timestamp"]}
    r = runs.setdefault((op, run_id, h.get("restore_id")), new)
    r["tables"][name] = h["version"]
    r["ms"] = min(r["ms"], h["timestamp"] or r["ms"])


def current_runs(out: str) -> list[dict]:
    """Every date's current run, by date, from the dates' manifests (one small read each, no table
    log): date, run_id, operation (write, restore, migrate), time (when its manifest was made), counts,
    tables {name: version}."""
    uris = [manifest_uri(out, d) for d in manifest_dates(out)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        manifests = list(pool.map(storage.read_json, uris))
    rows = []
    for m in manifests:
        restored = m.get("restored") or {}
        op = "restore" if restored else ("migrate" if m.get("migrated") else "write")
        rows.append(
            {
                "date": m["date"],
                "run_id": m.get("run_id"),
                "operation": op,
                "time": (restored.get("at") or m.get("finished_at") or "")[:19],
                "counts": m.get("counts") or {},
                "tables": m.get("tables") or {},
            }
        )
    return rows


def archived_manifest(out: str, date: str, run_id: str) -> dict:
    """The manifest run `run_id` committed for `date`; ConfigError when there is none."""
    uri = run_manifest_uri(out, date, run_id)
    if not storage.exists(uri):
        raise ConfigError(
            f"no committed run {run_id} for {date} in {out}; `xlmflow history --out {out} --date {date}` "
            "lists the runs that can be restored"
        )
    return storage.read_json(uri)


def restore_run(out: str, date: str, run_id: str, restore_id: str, fence: Callable[[], None]) -> dict:
    """Make `run_id`'s committed files the date's current files in every table; returns the manifest.
    Called with the partition's lease held (`fence` checks it before each commit).

    New commits of remove/add actions (the tables' other dates are untouched), then a manifest pinning
    them. Tables the run did not write lose the date's files.
    """
    old = archived_manifest(out, date, run_id)
    current = read_manifest(out, date) or {}
    wanted = {
        name: _restorable_files(out, date, run_id, name, v) for name, v in (old.get("tables") or {}).items()
    }
    for name in current.get("tables") or {}:
        wanted.setdefault(name, [])  # a dataset the restored run did not have: empty the date
    meta = {
        "operation": "restore",
        "run_id": run_id,
        "restore_id": restore_id,
        "date": date,
        "config_hash": old.get("config_hash"),
        "counts": old.get("counts"),
        "replaced_run": current.get("run_id"),
    }
    versions = {}
    for name, files in wanted.items():
        fence()
        base = delta.open_table(out, name).version()
        v = delta.replace_files(out, name, date, files, base, meta)
        delta.checkpoint(out, name)
        if name in (old.get("tables") or {}):
            versions[name] = v
    fence()
    restored = {
        "at": dt.datetime.now(dt.UTC).isoformat(),
        "restore_id": restore_id,
        "replaced_run": current.get("run_id"),
    }
    manifest = {**old, "tables": versions, "restored": restored}
    # the current manifest only: the run's archived manifest stays what the run committed
    storage.write_json(manifest_uri(out, date), manifest)
    return manifest


def _restorable_files(out: str, date: str, run_id: str, name: str, version: int) -> list[dict]:
    """The date's files in `version` of table `name`; FatalError when vacuum removed its log or files."""
    if version < delta_log.oldest_version(out, name):
        raise FatalError(
            f"run {run_id} of {date} cannot be restored: vacuum removed the log of table {name} "
            f"up to its version {version} (older than the retention); rerun the date with --force instead"
        )
    files = delta.files_for_commit(out, name, date, version)
    gone = [f["path"] for f in files if not storage.exists(storage.join(out, f["path"]))]
    if gone:
        raise FatalError(
            f"run {run_id} of {date} cannot be restored: vacuum deleted {len(gone)} of its files "
            f"(e.g. {gone[0]}); rerun the date with --force instead"
        )
    return files
