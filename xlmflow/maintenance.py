"""Table maintenance: vacuum superseded files, restore a run, migrate an old layout.

Every operation that changes a partition (restore, migrate) holds the partition's lease like a run does;
vacuum never deletes under a date whose lease is held. The tables are those on disk under OUT
(xlmflow.delta.table_names), whatever processors wrote them.
"""

from __future__ import annotations

import logging
import time
import uuid

import pyarrow.parquet as pq

from xlmflow import delta, delta_log, delta_schema, history, lease, schemas, storage
from xlmflow.errors import ConfigError, FatalError
from xlmflow.manifest import (
    MANIFEST_VERSION,
    archived_runs,
    manifest_dates,
    manifest_uri,
    read_manifest,
    run_manifest_uri,
    write_manifest,
)
from xlmflow.part_files import part_uri, write_parquet
from xlmflow.partition import Partition
from xlmflow.settings import LEASE_TTL, LOCK_TIMEOUT
from xlmflow.stats import file_stats

log = logging.getLogger(__name__)

DEFAULT_RETAIN_HOURS = 168  # Delta's own default (delta.deletedFileRetentionDuration, 7 days)
MIN_RETAIN_HOURS_WHILE_HELD = 1


def held_dates(out: str) -> list[str]:
    """Dates whose partition lease is held right now (not expired)."""
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
    for name in delta.table_names(out):
        removed[name] = _vacuum_table(out, name, retain_hours, dry_run, pins, held)
        if dry_run:
            continue
        delta.checkpoint(out, name)
        if held:
            log.info("vacuum %s: log entries kept while runs hold partitions %s", name, ", ".join(held))
            continue
        pinned = [v for p in pins.values() if (v := p.get(name)) is not None]
        n = delta_log.cleanup_log(out, name, min(pinned) if pinned else None, cutoff_ms)
        if n:
            log.info("vacuum %s: removed %d log files older than %g h", name, n, retain_hours)
    return removed


def _vacuum_table(
    out: str, name: str, retain_hours: float, dry_run: bool, pins: dict, held: list[str]
) -> dict[str, int]:
    """Vacuum one table's files (not its log); returns {path relative to the table: bytes} deleted."""
    table = delta.open_table(out, name)
    if not dry_run and delta.own_log_cleanup(table):
        table = delta.open_table(out, name)
    # what expires within the next hour too: the versions to keep are picked from these files'
    # dates, so the deleting call below (moments later) meets none outside them
    hours = max(int(retain_hours) - 1, 0)
    soon = _rel(
        out, name, table.vacuum(retention_hours=hours, dry_run=True, enforce_retention_duration=False)
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
            table.vacuum(
                retention_hours=int(retain_hours),
                dry_run=dry_run,
                enforce_retention_duration=False,
                keep_versions=sorted(keep) or None,
                post_commithook_properties=delta.no_hooks(),
            ),
        )
    if keep:
        log.info("vacuum %s: kept the files of versions %s (pinned, or a held date's)", name, sorted(keep))
    return {r: sizes[r] for r in sorted(gone) if r in sizes}


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
    by_date: dict[str, set[str]] = {}
    for r in candidates:
        part = r.split("/", 1)[0]
        if part.startswith(f"{delta.PARTITION}="):
            by_date.setdefault(part.split("=", 1)[1], set()).add(r)
    oldest = delta_log.oldest_version(out, name) if by_date else 0  # older versions lost their log
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


def restore(
    out: str, date: str, run_id: str, lock_timeout: float = LOCK_TIMEOUT, lease_ttl: float = LEASE_TTL
) -> dict:
    """Make `run_id`'s committed files the date's current files in every table, holding the
    partition's lease like a run does; returns the manifest (xlmflow.history.restore_run)."""
    history.archived_manifest(out, date, run_id)  # an unknown run is refused before waiting for the lease
    with Partition(out, date, lease_ttl=lease_ttl).held(lock_timeout, on_wait=log.warning) as p:
        return p.restore(run_id)


def _rewrite_fixed_size_lists(out: str, lock_timeout: float, lease_ttl: float) -> dict[str, int]:
    """Rewrite the current files of every table that hold fixed-size lists; returns files per table.

    Per date, under the partition's lease: new files (`part-<migration id>-<n>`, the old ones stay
    for readers of older versions until vacuum), one commit replacing the date's files, then the
    date's manifest pins the new version so readers through it and the next run see the same files.
    """
    import pyarrow as pa  # lazy: pyarrow costs at CLI start

    migration_id = uuid.uuid4().hex
    done: dict[str, int] = {}
    for name in delta.table_names(out):
        table = delta.open_table(out, name)
        if not any(pa.types.is_list(f.type) for f in delta_schema.file_schema(table)):
            continue
        for date, stale in sorted(_fixed_size_files(out, name, table).items()):
            with Partition(out, date, migration_id, lease_ttl).held(lock_timeout, on_wait=log.warning) as p:
                _rewrite_date(p, name, stale, migration_id)
            done[name] = done.get(name, 0) + len(stale)
    return done


def _fixed_size_files(out: str, name: str, table) -> dict[str, list[str]]:  # noqa: ANN001
    """The current files of a table that hold a fixed-size list, by date."""
    import pyarrow as pa  # lazy: pyarrow costs at CLI start

    by_date: dict[str, list[str]] = {}
    adds = pa.table(table.get_add_actions(flatten=True))
    dates = adds[f"partition.{delta.PARTITION}"].to_pylist() if adds.num_rows else []
    for path, date in zip(adds["path"].to_pylist(), dates, strict=True):
        fs, local = storage.fresh(storage.join(out, name, path))
        with fs.open(local, "rb") as fh:
            if any(pa.types.is_fixed_size_list(x.type) for x in pq.read_schema(fh)):
                by_date.setdefault(date, []).append(path)
    return by_date


def _rewrite_date(p: Partition, name: str, stale: list[str], migration_id: str) -> None:
    """Rewrite one date's `stale` files of table `name` and commit them; the manifest then pins it."""
    import pyarrow.parquet as pq  # lazy: pyarrow costs at CLI start

    out, date = p.out, p.date
    base = delta.open_table(out, name)
    current = {f["path"]: f for f in delta.partition_files(base, date)}
    manifest = p.manifest()
    pinned = (manifest or {}).get("tables", {}).get(name)
    if pinned is not None and {f["path"] for f in delta.files_for_commit(out, name, date, pinned)} != {
        f"{name}/{q}" for q in current
    }:
        raise FatalError(
            f"partition {date}: table {name} does not hold the files its manifest pins (a run "
            "stopped between its commits); run the date again, then migrate"
        )
    files = [
        {
            "path": f"{name}/{q}",
            "bytes": f["size"],
            "rows": f["rows"],
            "mtime": f["mtime"],
            "stats": f["stats"],
        }
        for q, f in current.items()
        if q not in stale
    ]
    for n, path in enumerate(q for q in stale if q in current):
        fs, local = storage.fresh(storage.join(out, name, path))
        with fs.open(local, "rb") as fh:
            old = pq.read_table(fh)
        empty = schemas.file_schema(old.schema).serialize().to_pybytes()
        files.append(write_parquet(out, part_uri(out, name, date, migration_id, n), [old], empty).entry)
    meta = {
        "operation": "migrate",
        "migration": "fixed-size lists rewritten as lists",
        "date": date,
        "run_id": (manifest or {}).get("run_id"),
        "partitions": {date: (manifest or {}).get("run_id")},
    }
    p.check()
    v = delta.replace_files(out, name, date, files, base.version(), meta, base)
    if manifest and (manifest.get("tables") or {}).get(name) is not None:
        p.check()
        # the migration's id marks its files as the date's own for the debris check
        migrations = sorted({*manifest.get("migrations", []), migration_id})
        tables = {**manifest["tables"], name: v}
        storage.write_json(manifest_uri(out, date), {**manifest, "tables": tables, "migrations": migrations})


def _convert_layout(out: str, paths: list[str]) -> dict[str, int]:
    """Plain Parquet directories + manifests into Delta tables, keeping every file; files per dataset."""
    manifests = [storage.read_json(p) for p in paths]
    done: dict[str, int] = {}
    versions: dict[str, int] = {}
    partitions = {m["date"]: m["run_id"] for m in manifests}
    for name in sorted({n for m in manifests for n in m.get("files") or {}}):
        listed = [(m["date"], f) for m in manifests for f in m.get("files", {}).get(name, [])]
        if not listed:
            continue
        if delta.has_table(out, name):
            raise ConfigError(f"{storage.join(out, name)} is already a Delta table; the layouts cannot mix")
        versions[name] = _convert_table(out, name, listed, partitions)
        done[name] = len(listed)
    for m in manifests:
        tables = {n: versions[n] for n in done if m.get("files", {}).get(n)}
        write_manifest(out, {**m, "manifest_version": MANIFEST_VERSION, "tables": tables, "migrated": True})
    return done


def _convert_table(out: str, name: str, listed: list[tuple[str, dict]], partitions: dict[str, str]) -> int:
    """Create table `name` and commit the listed (date, file entry) files to it; returns its version."""
    import pyarrow.parquet as pq  # lazy: pyarrow and deltalake cost at CLI start
    from deltalake import DeltaTable
    from deltalake.transaction import CommitProperties

    adds = []
    schema = None
    for date, f in listed:
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
    uri = delta.table_uri(out, name)
    table = DeltaTable.create(
        uri,
        delta_schema.table_schema(schema),
        partition_by=[delta.PARTITION],
        mode="error",
        storage_options=delta.storage_options(uri),
        configuration=delta.TABLE_CONFIG,
        post_commithook_properties=delta.no_hooks(),
    )
    created = table.version()
    meta = {"operation": "migrate", "partitions": partitions}
    # an overwrite of the whole table (no predicate), as other Delta writers record a conversion
    table.create_write_transaction(
        adds,
        mode="overwrite",
        schema=table.schema(),
        partition_by=[delta.PARTITION],
        commit_properties=CommitProperties(custom_metadata=delta.commit_info(meta, None, created)),
    )
    return created + 1
