"""Table maintenance: vacuum superseded files, list a date's runs, restore one, migrate an old layout.

Every operation that changes a partition (restore) holds the partition's lease like a run does; vacuum
never deletes under a date whose lease is held.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid

from xlmflow import delta, storage
from xlmflow.errors import ConfigError, FatalError
from xlmflow.settings import LEASE_TTL, LOCK_TIMEOUT

log = logging.getLogger(__name__)

DEFAULT_RETAIN_HOURS = 168  # Delta's own default (delta.deletedFileRetentionDuration, 7 days)
MIN_RETAIN_HOURS_WHILE_HELD = 1


def _datasets() -> tuple[str, ...]:
    """The datasets of every registered processor type and the core ones."""
    from ray_cluster.processors.base import known_datasets

    return tuple(known_datasets())


def held_dates(out: str) -> list[str]:
    """Dates whose partition lease is held right now (not expired)."""
    from xlmflow import lease

    fs, path = storage.fresh(storage.join(out, "_leases"))
    try:
        names = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    dates = []
    for n in names:
        base = n.rsplit("/", 1)[-1]
        if base.startswith("date=") and base.endswith(".json"):
            date = base[len("date=") : -len(".json")]
            seen = lease.show(out, date)
            if seen is not None and not seen.expired:
                dates.append(date)
    return sorted(dates)


def vacuum(
    out: str, retain_hours: float = DEFAULT_RETAIN_HOURS, dry_run: bool = False
) -> dict[str, dict[str, int]]:
    """Delete files that versions older than `retain_hours` alone reference; returns them per table
    ({path relative to the table: bytes}).

    A file is deleted only when it was removed from its table more than `retain_hours` ago (Delta's
    tombstones) and no version a manifest pins references it; files never committed are left to the
    next run of their date. delta-rs deletes them and records the VACUUM START and VACUUM END commits
    other Delta writers record. Then log entries older than the retention are removed, keeping every
    version a date's manifest pins loadable; not while a run holds a partition (its commit reads the
    log since its start).
    """
    if retain_hours < 0 or retain_hours != int(retain_hours):
        raise ConfigError("--retain-hours must be a whole number of hours, 0 or more")
    held = held_dates(out)
    if held and retain_hours < MIN_RETAIN_HOURS_WHILE_HELD:
        raise ConfigError(
            f"runs hold partitions {', '.join(held)} right now; a retention under "
            f"{MIN_RETAIN_HOURS_WHILE_HELD} h could delete files their readers still use. Wait for them, "
            "or vacuum with --retain-hours 1 or more"
        )
    pins = _current_pins(out)
    cutoff_ms = int((time.time() - retain_hours * 3600) * 1000)
    removed: dict[str, dict[str, int]] = {}
    for name in _datasets():
        dt_ = delta.open_table(out, name)
        if dt_ is None:
            continue
        if not dry_run and delta.own_log_cleanup(dt_):
            dt_ = delta.open_table(out, name)
        # what expires within the next hour too: the versions to keep are picked from these files'
        # dates, so the deleting call below (moments later) meets none outside them
        soon = _rel(
            out,
            name,
            dt_.vacuum(
                retention_hours=max(int(retain_hours) - 1, 0),
                dry_run=True,
                enforce_retention_duration=False,
            ),
        )
        sizes = _sizes(out, name, soon)
        # tombstones outlive the files vacuum deleted (delta.TABLE_CONFIG says why): only files still
        # there count
        soon = [r for r in soon if r in sizes]
        keep = _keep_versions(out, name, soon, pins, held) if soon else None
        gone = []
        if keep is not None:
            gone = _rel(
                out,
                name,
                dt_.vacuum(
                    retention_hours=int(retain_hours),
                    dry_run=dry_run,
                    enforce_retention_duration=False,
                    keep_versions=sorted(keep) or None,
                    post_commithook_properties=delta._no_hooks(),
                ),
            )
        if keep:
            log.info(
                "vacuum %s: kept the files of versions %s (pinned, or a held date's)", name, sorted(keep)
            )
        removed[name] = {r: sizes[r] for r in sorted(gone) if r in sizes}
        if dry_run:
            continue
        delta.checkpoint(out, name)
        if held:
            log.info("vacuum %s: log entries kept while runs hold partitions %s", name, ", ".join(held))
            continue
        pinned = [v for p in pins.values() if (v := p.get(name)) is not None]
        n = delta.cleanup_log(out, name, min(pinned) if pinned else None, cutoff_ms)
        if n:
            log.info("vacuum %s: removed %d log files older than %g h", name, n, retain_hours)
    return removed


def _rel(out: str, name: str, paths: list[str]) -> list[str]:
    """Paths relative to the table (delta-rs' vacuum answers some as absolute URIs)."""
    root = delta.table_uri(out, name).rstrip("/") + "/"
    prefixes = (root, root.split("://", 1)[-1], "/" + root.split("://", 1)[-1].lstrip("/"))
    rel = []
    for s in paths:
        rel.append(next((s[len(p) :] for p in prefixes if s.startswith(p)), s))
    return rel


def _current_pins(out: str) -> dict[str, dict[str, int]]:
    """Each date's table versions, as its current manifest pins them."""
    from xlmflow.manifest import manifest_dates, read_manifest

    return {d: (read_manifest(out, d) or {}).get("tables") or {} for d in manifest_dates(out)}


def _keep_versions(
    out: str, name: str, candidates: list[str], pins: dict, held: list[str]
) -> set[int] | None:
    """The versions whose files vacuum must keep, so that none of `candidates` (paths relative to table
    `name`) it must keep is deleted: the version a date's manifest pins, where it holds candidates of
    that date; for a date a run holds right now, the versions its archived runs pin, covering all its
    candidates (the run may be restoring one). None: a held date's candidate is in none of them, the
    table waits for a later vacuum. delta-rs keeps whole versions: other files they hold wait too.

    A run that crashed between its table commits and its manifest leaves tables whose latest version
    no longer holds the files the manifest pins; they are what readers through the manifest read, and
    what the next run points the table at again, so no retention makes them deletable."""
    from xlmflow.manifest import archived_runs, run_manifest_uri

    by_date: dict[str, set[str]] = {}
    for r in candidates:
        part = r.split("/", 1)[0]
        if part.startswith(f"{delta.PARTITION}="):
            by_date.setdefault(part.split("=", 1)[1], set()).add(r)
    oldest = delta.oldest_version(out, name) if by_date else 0  # older versions lost their log
    keep: set[int] = set()
    for date, paths in by_date.items():
        versions = {v} if (v := (pins.get(date) or {}).get(name)) is not None else set()
        left = set(paths) if date in held else set()
        if date in held:
            for run in archived_runs(out, date):
                v = (storage.read_json(run_manifest_uri(out, date, run)).get("tables") or {}).get(name)
                versions |= {v} if v is not None else set()
        for v in sorted(x for x in versions if x >= oldest):
            held_files = {f["path"] for f in delta.partition_files(delta.open_table(out, name, v), date)}
            if paths & held_files:
                keep.add(v)
            left -= held_files
        if left:
            log.info(
                "vacuum %s: %d files of held partition %s kept; vacuum again later", name, len(left), date
            )
            return None
    return keep


def _sizes(out: str, name: str, paths: list[str]) -> dict[str, int]:
    """Bytes of each file (paths relative to table `name`), one listing per directory."""
    by_dir: dict[str, set[str]] = {}
    for r in paths:
        d, _, base = r.rpartition("/")
        by_dir.setdefault(d, set()).add(base)
    sizes = {}
    for d, bases in by_dir.items():
        fs, path = storage.fresh(storage.join(out, name, d) if d else storage.join(out, name))
        try:
            listing = fs.ls(path, detail=True)
        except FileNotFoundError:
            continue
        for e in listing:
            base = e["name"].rsplit("/", 1)[-1]
            if base in bases:
                sizes[f"{d}/{base}" if d else base] = int(e.get("size") or 0)
    return sizes


def runs_of(out: str, date: str) -> list[dict]:
    """The runs committed for `date`, oldest first, from the tables' commit metadata.

    Each: run_id, operation (write, restore, migrate), tables {name: version}, counts, time, current
    (the manifest pins exactly these versions), complete (the run's manifest was written). A
    migration that rewrote one date's files counts as a commit of the run whose files it rewrote.
    """
    from xlmflow.manifest import read_manifest, run_manifest_uri

    runs: dict[tuple, dict] = {}
    for name in _datasets():
        for h in delta.history(out, name):
            op = h.get("operation", "write")
            if op == "migrate" and h.get("date") == date:
                # a rewrite of one date's files (same rows, another file layout) stays its run's commit
                own = [r for k, r in runs.items() if k[1] == h.get("run_id") and name in r["tables"]]
                if own:
                    own[-1]["tables"][name] = h["version"]
                    continue
            if op == "migrate":
                run_id = (h.get("partitions") or {}).get(date)
            elif h.get("date") == date:
                run_id = h.get("run_id")
            else:
                continue
            if not run_id:
                continue
            key = (op, run_id, h.get("restore_id"))
            r = runs.setdefault(
                key,
                {
                    "run_id": run_id,
                    "operation": op,
                    "tables": {},
                    "counts": h.get("counts"),
                    "ms": h["timestamp"],
                },
            )
            r["tables"][name] = h["version"]
            r["ms"] = min(r["ms"], h["timestamp"] or r["ms"])
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


def current_runs(out: str) -> list[dict]:
    """Every date's current run, by date, from the dates' manifests (one small read each, no table
    log): date, run_id, operation (write, restore, migrate), time (when its manifest was made), counts,
    tables {name: version}."""
    from concurrent.futures import ThreadPoolExecutor

    from xlmflow.manifest import manifest_dates, manifest_uri

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


def restore(
    out: str, date: str, run_id: str, lock_timeout: float = LOCK_TIMEOUT, lease_ttl: float = LEASE_TTL
) -> dict:
    """Make `run_id`'s committed files the date's current files in every table; returns the manifest.

    New commits of remove/add actions (the tables' other dates are untouched), then a manifest pinning
    them. Tables the run did not write lose the date's files.
    """
    from xlmflow.lease import PartitionLease
    from xlmflow.manifest import manifest_uri, read_manifest, run_manifest_uri

    uri = run_manifest_uri(out, date, run_id)
    if not storage.exists(uri):
        raise ConfigError(
            f"no committed run {run_id} for {date} in {out}; `xlmflow history --out {out} --date {date}` "
            "lists the runs that can be restored"
        )
    old = storage.read_json(uri)
    restore_id = uuid.uuid4().hex
    lease = PartitionLease(out, date, restore_id, lease_ttl)
    lease.acquire(lock_timeout, on_wait=log.warning)
    try:
        current = read_manifest(out, date) or {}
        wanted: dict[str, list[dict]] = {}
        for name, version in (old.get("tables") or {}).items():
            if version < delta.oldest_version(out, name):
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
            wanted[name] = files
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
            lease.check()
            base = delta.open_table(out, name).version()
            v = delta.commit_partition(out, name, date, files, base, meta)
            delta.checkpoint(out, name)
            if name in (old.get("tables") or {}):
                versions[name] = v
        lease.check()
        manifest = {
            **old,
            "tables": versions,
            "restored": {
                "at": dt.datetime.now(dt.UTC).isoformat(),
                "restore_id": restore_id,
                "replaced_run": current.get("run_id"),
            },
        }
        # the current manifest only: the run's archived manifest stays what the run committed
        storage.write_json(manifest_uri(out, date), manifest)
        return manifest
    finally:
        lease.release()


def migrate(
    out: str, lock_timeout: float = LOCK_TIMEOUT, lease_ttl: float = LEASE_TTL
) -> dict[str, dict[str, int]]:
    """Bring an OUT written by earlier versions up to date, keeping every committed file readable.

    - `converted`: plain Parquet directories + manifests become Delta tables (per dataset, the table's
      creation, then one commit that overwrites the whole table with add actions of the files the
      manifests list, their statistics read from the footers; the manifests then pin those versions);
    - `rewritten`: data files holding vectors as fixed-size lists (which Polars' and DuckDB's native
      Delta readers refuse: the table says `array`) are rewritten as plain lists, one commit per date.

    Returns files per dataset for each step; a ConfigError when there is nothing to do.
    """
    legacy = delta.legacy_manifests(out)
    held = held_dates(out)
    if held:
        raise ConfigError(f"runs hold partitions {', '.join(held)}; migrate when no run is active")
    converted = _convert_layout(out, legacy) if legacy else {}
    rewritten = _rewrite_fixed_size_lists(out, lock_timeout, lease_ttl)
    if not converted and not rewritten:
        raise ConfigError(f"{out} is up to date (Delta tables, no fixed-size lists): nothing to migrate")
    return {"converted": converted, "rewritten": rewritten}


def _rewrite_fixed_size_lists(out: str, lock_timeout: float, lease_ttl: float) -> dict[str, int]:
    """Rewrite the current files of every table that hold fixed-size lists; returns files per table.

    Per date, under the partition's lease: new files (`part-<migration id>-<n>`, the old ones stay
    for readers of older versions until vacuum), one commit replacing the date's files, then the
    date's manifest pins the new version so readers through it and the next run see the same files.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.write import part_uri, write_part
    from xlmflow import schemas
    from xlmflow.lease import PartitionLease
    from xlmflow.manifest import manifest_uri, read_manifest

    migration_id = uuid.uuid4().hex
    done: dict[str, int] = {}
    for name in _datasets():
        table = delta.open_table(out, name)
        if table is None or not any(pa.types.is_list(f.type) for f in delta.file_schema(table)):
            continue
        by_date: dict[str, list[str]] = {}
        adds = pa.table(table.get_add_actions(flatten=True))
        dates = adds[f"partition.{delta.PARTITION}"].to_pylist() if adds.num_rows else []
        for path, date in zip(adds["path"].to_pylist(), dates, strict=True):
            fs, local = storage.fresh(storage.join(out, name, path))
            with fs.open(local, "rb") as fh:
                if any(pa.types.is_fixed_size_list(x.type) for x in pq.read_schema(fh)):
                    by_date.setdefault(date, []).append(path)
        for date, stale in sorted(by_date.items()):
            lease = PartitionLease(out, date, migration_id, lease_ttl)
            lease.acquire(lock_timeout, on_wait=log.warning)
            try:
                base = delta.open_table(out, name)
                current = {f["path"]: f for f in delta.partition_files(base, date)}
                manifest = read_manifest(out, date)
                pinned = (manifest or {}).get("tables", {}).get(name)
                if pinned is not None and {
                    f["path"] for f in delta.files_for_commit(out, name, date, pinned)
                } != {f"{name}/{p}" for p in current}:
                    raise FatalError(
                        f"partition {date}: table {name} does not hold the files its manifest pins (a run "
                        "stopped between its commits); run the date again, then migrate"
                    )
                files = [
                    {
                        "path": f"{name}/{p}",
                        "bytes": f["size"],
                        "rows": f["rows"],
                        "mtime": f["mtime"],
                        "stats": f["stats"],
                    }
                    for p, f in current.items()
                    if p not in stale
                ]
                for n, path in enumerate(p for p in stale if p in current):
                    fs, local = storage.fresh(storage.join(out, name, path))
                    with fs.open(local, "rb") as fh:
                        old = pq.read_table(fh)
                    uri = part_uri(out, name, date, migration_id, n)
                    empty = schemas.file_schema(old.schema).serialize().to_pybytes()
                    files.append(write_part(out, name, uri, [{"kind": "table", "table": old}], empty)["file"])
                meta = {
                    "operation": "migrate",
                    "migration": "fixed-size lists rewritten as lists",
                    "date": date,
                    "run_id": (manifest or {}).get("run_id"),
                    "partitions": {date: (manifest or {}).get("run_id")},
                }
                lease.check()
                v = delta.commit_partition(out, name, date, files, base.version(), meta, base)
                if manifest and (manifest.get("tables") or {}).get(name) is not None:
                    lease.check()
                    # the migration's id marks its files as the date's own for the debris check
                    migrations = sorted({*manifest.get("migrations", []), migration_id})
                    tables = {**manifest["tables"], name: v}
                    manifest = {**manifest, "tables": tables, "migrations": migrations}
                    storage.write_json(manifest_uri(out, date), manifest)
                done[name] = done.get(name, 0) + len(stale)
            finally:
                lease.release()
    return done


def _convert_layout(out: str, paths: list[str]) -> dict[str, int]:
    """Plain Parquet directories + manifests into Delta tables, keeping every file; files per dataset."""
    import pyarrow.parquet as pq
    from deltalake import DeltaTable
    from deltalake.transaction import CommitProperties

    from xlmflow.manifest import MANIFEST_VERSION, write_manifest
    from xlmflow.stats import file_stats

    manifests = [storage.read_json(p) for p in paths]
    done: dict[str, int] = {}
    versions: dict[str, int] = {}
    for name in _datasets():
        listed = [(m["date"], m["run_id"], f) for m in manifests for f in m.get("files", {}).get(name, [])]
        if not listed:
            continue
        if delta.has_table(out, name):
            raise ConfigError(f"{storage.join(out, name)} is already a Delta table; the layouts cannot mix")
        adds = []
        schema = None
        for date, _run, f in listed:
            fs, path = storage.fresh(storage.join(out, f["path"]))
            info = fs.info(path)
            with fs.open(path, "rb") as fh:
                footer = pq.read_metadata(fh)
            schema = schema or footer.schema.to_arrow_schema()
            mtime = info.get("LastModified") or info.get("mtime") or time.time()
            ms = int(mtime.timestamp() * 1000) if hasattr(mtime, "timestamp") else int(float(mtime) * 1000)
            stats = file_stats(footer, footer.schema.to_arrow_schema())
            adds.append(
                delta.add_action(f["path"][len(name) + 1 :], int(info["size"]), date, ms, f["rows"], stats)
            )
        meta = {"operation": "migrate", "partitions": {m["date"]: m["run_id"] for m in manifests}}
        uri = delta.table_uri(out, name)
        opts = delta.storage_options(uri)
        table = DeltaTable.create(
            uri,
            delta.table_schema(schema),
            partition_by=[delta.PARTITION],
            mode="error",
            storage_options=opts,
            configuration=delta.TABLE_CONFIG,
            post_commithook_properties=delta._no_hooks(),
        )
        created = table.version()
        # an overwrite of the whole table (no predicate), as other Delta writers record a conversion
        table.create_write_transaction(
            adds,
            mode="overwrite",
            schema=table.schema(),
            partition_by=[delta.PARTITION],
            commit_properties=CommitProperties(custom_metadata=delta.commit_info(meta, None, created)),
        )
        done[name] = len(adds)
        versions[name] = created + 1
    for m in manifests:
        tables = {n: versions[n] for n in done if m.get("files", {}).get(n)}
        write_manifest(out, {**m, "manifest_version": MANIFEST_VERSION, "tables": tables, "migrated": True})
    return done
