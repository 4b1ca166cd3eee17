"""Every output dataset is a Delta Lake table at OUT/<dataset>/, partitioned by `date` (delta-rs).

Data files are written first (by whoever produced them) and then committed without being rewritten:
one transaction per table of `remove` actions for the date's current files and `add` actions for the
new ones. Optimistic concurrency, made strict: the run remembers each table's version when it starts;
at commit it reads every commit made since and refuses if any of them touched its date (another run of
the partition got there first), then commits at exactly the next version (a conditional PUT on S3, no
DynamoDB). A commit that lands in between sends it back to look again, so runs of *other* dates never
fail it, and runs of the *same* date never interleave their files.

Checkpoints are written every `checkpoint_interval` commits (or the table's `delta.checkpointInterval`)
after a commit, so opening a table and the run-time log reads start from the last checkpoint; old log
entries are removed by `xlmflow vacuum` only (delta-rs' own post-commit cleanup is turned off: it would
drop versions that manifests still pin).

Tables keep to reader version 1 / writer version 2 (no deletion vectors, column mapping or timestampNtz),
which Spark, Trino, Athena, DuckDB and Polars all read. Schemas evolve only by adding nullable columns.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc

from xlmflow import storage
from xlmflow.delta_log import (
    LOG_DIR,
    META_KEY,
    PARTITION,
    commit_meta,
    commit_outcome,
    first_touching,
    last_checkpoint,
    logged_since_checkpoint,
    meta_of,
    read_log_entry,
)
from xlmflow.errors import ConfigError, FatalError
from xlmflow.settings import CHECKPOINT_INTERVAL
from xlmflow.stats import stats_of_action

# what of it goes into commitInfo.userMetadata, which Spark's and Databricks' DESCRIBE HISTORY show
USER_METADATA = ("operation", "run_id", "date", "config_hash", "counts", "restore_id", "replaced_run")
COMMIT_ATTEMPTS = 20  # commits of other dates that land between our look and our PUT, in a row
# log cleanup is vacuum's, which keeps the versions manifests pin; delta-rs' vacuum (and other
# writers, Spark's included) would otherwise drop log entries by age alone
# vacuum sees the files to delete through their tombstones, which a checkpoint drops once older than
# deletedFileRetentionDuration (7 days by default): files superseded earlier than that, or kept longer
# because a manifest pinned them, would never be deleted. Tombstones are kept (a few hundred bytes
# each in the checkpoints), and vacuum's own --retain-hours decides
TABLE_CONFIG = {
    "delta.enableExpiredLogCleanup": "false",
    "delta.deletedFileRetentionDuration": "interval 36500 days",
}

log = logging.getLogger(__name__)


class CommitConflictError(FatalError):
    """Another run committed the same partition to a table after this run read its snapshot."""


def table_uri(out: str, name: str) -> str:
    uri = storage.join(out, name)
    return uri if storage.is_remote(uri) else os.path.abspath(uri)


# a boto3 session costs ~70 ms to build; temporary credentials are refreshed well before they expire
_AWS_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_REGION")
_OPTIONS_TTL_S = 300
_options_cache: dict[tuple, tuple[float, dict]] = {}


def storage_options(uri: str) -> dict[str, str] | None:
    """delta-rs (object_store) options for s3:// URIs, from the same sources s3fs and boto3 use.

    delta-rs reads AWS_* variables but not ~/.aws files or profiles, so credentials come from boto3's
    chain (env, profile, SSO, instance metadata). The values are secrets: never log this dict.
    """
    if not storage.is_remote(uri):
        return None
    key = tuple(os.environ.get(k) for k in _AWS_ENV)
    hit = _options_cache.get(key)
    if hit and time.monotonic() - hit[0] < _OPTIONS_TTL_S:
        return dict(hit[1])
    # lazy: boto3 loads its service models; only S3 paths need it
    import boto3

    session = boto3.Session()
    opts = {"AWS_REGION": session.region_name or os.environ.get("AWS_REGION") or "us-east-1"}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            opts["AWS_ALLOW_HTTP"] = "true"
    creds = session.get_credentials()
    if creds is not None:
        frozen = creds.get_frozen_credentials()
        opts["AWS_ACCESS_KEY_ID"], opts["AWS_SECRET_ACCESS_KEY"] = frozen.access_key, frozen.secret_key
        if frozen.token:
            opts["AWS_SESSION_TOKEN"] = frozen.token
    _options_cache[key] = (time.monotonic(), dict(opts))
    return opts


def open_table(out: str, name: str, version: int | None = None):  # noqa: ANN201
    """The table at `version` (latest when None), or None when there is no table yet. (deltalake 1.6
    loads the file list whatever the caller needs: its `without_files` is deprecated and ignored.)"""
    # lazy: deltalake loads its Rust library; only table reads and commits need it
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    uri = table_uri(out, name)
    try:
        return DeltaTable(uri, version=version, storage_options=storage_options(uri))
    except TableNotFoundError:
        return None


def snapshot(out: str, names: list[str]) -> dict[str, int | None]:
    """Each table's current version (None: no table yet): what a run commits against."""
    tables = {n: open_table(out, n) for n in names}
    return {n: (t.version() if t is not None else None) for n, t in tables.items()}


def has_table(out: str, name: str) -> bool:
    return storage.exists(storage.join(out, name, LOG_DIR))


def table_names(out: str) -> list[str]:
    """The Delta tables under OUT, by name: whatever processors wrote them."""
    fs, path = storage.fresh(out)
    try:
        names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    except FileNotFoundError as exc:
        if "bucket does not exist" in str(exc).lower():
            raise  # a mistyped bucket is an error of --out (xlmflow.failures says so), not an empty OUT
        return []
    return [n for n in names if not n.startswith(("_", ".")) and has_table(out, n)]


def legacy_manifests(out: str) -> list[str]:
    """Manifests of OUT written before outputs became Delta tables (they pin no table versions).

    Manifests are all of one layout (a run refuses a legacy OUT, and migrate converts all of them), so
    the first one decides; a whole listing is only read to name them all.
    """
    root = storage.join(out, "_manifests")
    fs, path = storage.fresh(root)
    try:
        names = sorted(p for p in fs.ls(path, detail=False) if p.rsplit("/", 1)[-1].startswith("date="))
    except FileNotFoundError:
        return []
    if not names:
        return []
    first = storage.read_json(storage.join(root, names[0].rsplit("/", 1)[-1]))
    if "tables" in first:
        return []
    return [storage.join(root, n.rsplit("/", 1)[-1]) for n in names]


def partition_files(dt, date: str) -> list[dict]:  # noqa: ANN001
    """The add actions of one date in a table version: path (relative to the table), size, rows, and
    the file's statistics as Delta's stats JSON (None when its add action had none)."""

    t = pa.table(dt.get_add_actions(flatten=False))
    if t.num_rows == 0:
        return []
    t = t.filter(pc.equal(pc.struct_field(t["partition"], PARTITION), date))
    out = []
    for r in t.to_pylist():
        mtime = r["modification_time"]
        out.append(
            {
                "path": r["path"],
                "size": r["size_bytes"],
                "mtime": int(mtime.timestamp() * 1000) if hasattr(mtime, "timestamp") else int(mtime),
                "rows": r["num_records"],
                "stats": stats_of_action(r),
            }
        )
    return out


def files_for_commit(out: str, name: str, date: str, version: int) -> list[dict]:
    """The date's files in a table version, in the shape `replace_files` takes (paths under OUT)."""
    table = open_table(out, name, version)
    return [
        {
            "path": f"{name}/{f['path']}",
            "bytes": f["size"],
            "rows": f["rows"],
            "mtime": f["mtime"],
            "stats": f["stats"],
        }
        for f in partition_files(table, date)
    ]


def no_hooks():  # noqa: ANN202
    """delta-rs' post-commit hooks off: checkpoints are ours (`checkpoint`), log cleanup is vacuum's."""
    # lazy: deltalake loads its Rust library; only table reads and commits need it
    from deltalake.transaction import PostCommitHookProperties

    return PostCommitHookProperties(create_checkpoint=False, cleanup_expired_logs=False)


def own_log_cleanup(dt) -> bool:  # noqa: ANN001
    """Turn off age-based log cleanup by other writers in a table made before it was set (one metadata
    commit); True when it was."""
    conf = dt.metadata().configuration or {}
    if all(conf.get(k) == v for k, v in TABLE_CONFIG.items()):
        return False
    dt.alter.set_table_properties(TABLE_CONFIG, post_commithook_properties=no_hooks())
    return True


def checkpoint(
    out: str, name: str, interval: int | None = None, table=None, version: int | None = None
) -> int | None:  # noqa: ANN001, E501
    """Write a checkpoint of the table's latest version when `interval` commits (the table's
    `delta.checkpointInterval` when set) have passed since the last one; returns its version.
    `table`, `version`: the table as the caller loaded it and the version it just committed, which
    spare loading the table when no checkpoint is due.

    Only an optimisation (readers and the run-time log reads start from it): a failure is logged, never
    raised, since the commit before it has landed."""

    def due(dt, version: int) -> bool:  # noqa: ANN001
        conf = dt.metadata().configuration or {}
        every = int(conf.get("delta.checkpointInterval") or interval or CHECKPOINT_INTERVAL)
        return version - (last or 0) >= every

    try:
        last = last_checkpoint(out, name)
        if version is not None and table is not None and not due(table, version):
            return None
        dt = open_table(out, name)
        if dt is None or not due(dt, dt.version()):
            return None
        dt.create_checkpoint()
        return dt.version()
    except Exception as exc:  # noqa: BLE001 - the next commit tries again
        log.warning("table %s: no checkpoint written (%s); the next commit tries again", name, exc)
        return None


def add_action(path: str, size: int, date: str, mtime_ms: int, rows: int, stats: str | None = None):  # noqa: ANN201
    """The Delta `add` action of one data file of `date` (path relative to the table); `stats`: its
    stats JSON (xlmflow.stats.file_stats), else only its row count."""
    # lazy: deltalake loads its Rust library; only table reads and commits need it
    from deltalake.transaction import AddAction

    return AddAction(path, size, {PARTITION: date}, mtime_ms, True, stats or json.dumps({"numRecords": rows}))


def commit_info(meta: dict, predicate: str | None, read_version: int | None = None, **user) -> dict:
    """commitInfo fields of a commit that replaces data, as Delta's replaceWhere writes them: operation
    WRITE (delta-rs sets it), mode Overwrite, the predicate replaced (None: the whole table); what
    Spark's DESCRIBE HISTORY shows of the run in `userMetadata` (`user`: more of it); all of `meta`
    under META_KEY."""
    shown = {**user, **{k: meta[k] for k in USER_METADATA if meta.get(k) is not None}}
    if isinstance(shown.get("counts"), dict):  # the totals; the breakdowns stay under META_KEY
        shown["counts"] = {k: v for k, v in shown["counts"].items() if not isinstance(v, dict)}
    info: dict = {
        META_KEY: json.dumps(meta),
        "userMetadata": json.dumps(shown, sort_keys=True),
        "isBlindAppend": False,
    }
    if predicate is not None:
        info["operationParameters"] = {"predicate": json.dumps([predicate])}
    if read_version is not None:
        info["readVersion"] = read_version
    return info


def replace_files(
    out: str, name: str, date: str, files: list[dict], base_version: int | None, meta: dict, table=None
) -> int:  # noqa: ANN001
    """Replace the date's files in table `name` by `files` in one commit; returns its version.

    The commit is what Delta's replaceWhere on the date writes (WRITE, mode Overwrite, predicate
    `date = '<date>'`: delta-rs removes the date's current files), with `meta` in its commitInfo.

    `files`: {"path" (relative to OUT), "bytes", "rows", "mtime" (ms), "stats" (optional: the
    file's stats JSON, xlmflow.stats.file_stats)}. `base_version`: the table's version when the run
    started (None: there was no table). Raises CommitConflictError when a commit
    since then touched the same date. `table`: the table freshly loaded, if the caller has it.

    Each commit carries a fresh `commit_id`. A commit PUT whose answer was lost may have landed anyway
    (the client's retry then meets its own commit and fails with "version exists"): whenever the
    outcome of a PUT is unknown, the version it aimed at is read back, and if it is this commit, the
    commit succeeded.
    """
    adds = _add_actions(name, date, files)
    commit_id = uuid.uuid4().hex
    seen = -1 if base_version is None else base_version
    dt = table if table is not None else open_table(out, name)
    for attempt in range(COMMIT_ATTEMPTS):
        if attempt:
            dt.update_incremental()
        latest = dt.version()
        hit = first_touching(out, name, date, seen + 1, latest)
        if hit:
            v, other = hit
            if other.get("commit_id") == commit_id:
                return v  # our own commit, landed by a PUT whose answer was lost
            raise CommitConflictError(
                f"table {name}: partition {date} was committed at version {v} by run "
                f"{other.get('run_id', '(unknown tool)')} after this run started; this run committed "
                "nothing more. The partition is that run's; rerun with --force to replace it"
            )
        version = _attempt(out, name, date, dt, adds, {**meta, "commit_id": commit_id}, latest)
        if version is not None:
            return version
        seen = latest  # version latest+1 went to someone else: look at what it did
    raise CommitConflictError(
        f"table {name}: {COMMIT_ATTEMPTS} commits of other runs landed while this one tried to commit "
        f"{date}; rerun the same command"
    )


def _attempt(out: str, name: str, date: str, dt, adds: list, meta: dict, latest: int) -> int | None:  # noqa: ANN001
    """One try at committing `adds` as version latest+1: the version that holds them, or None when
    the version went to another commit (look again)."""
    from deltalake.exceptions import CommitFailedError  # lazy: deltalake costs at CLI start
    from deltalake.transaction import CommitProperties

    current = {f["path"]: f for f in partition_files(dt, date)}
    kept = current.keys() & {a.path for a in adds}
    if kept and kept == current.keys() and len(kept) == len(adds):
        return latest  # the date holds exactly these files already (a restore of the current run)
    info = commit_info(meta, f"{PARTITION} = '{date}'", latest, date=date)
    try:
        dt.create_write_transaction(
            *_replacement(adds, current, kept, date),
            schema=dt.schema(),
            partition_by=[PARTITION],
            partition_filters=[(PARTITION, "=", date)] if not kept else None,
            commit_properties=CommitProperties(custom_metadata=info, max_commit_retries=0),
            post_commithook_properties=no_hooks(),
        )
        return latest + 1
    except Exception as exc:
        try:
            landed = commit_outcome(out, name, latest + 1, meta["commit_id"])
        except Exception as read_exc:
            raise read_exc from exc  # outcome unknown: the caller keeps this run's files
        if landed:
            log.warning("table %s: commit %d landed although its answer was lost", name, latest + 1)
            return latest + 1
        # a race (the version went to another commit) or a transport error is worth another look;
        # anything else (a schema error, a 403) is the answer itself
        if not (isinstance(exc, CommitFailedError) or (landed is False and isinstance(exc, OSError))):
            raise
        return None


def _add_actions(name: str, date: str, files: list[dict]) -> list:
    prefix = name.strip("/") + "/"
    return [
        add_action(
            f["path"][len(prefix) :] if f["path"].startswith(prefix) else f["path"],
            f["bytes"],
            date,
            f.get("mtime") or int(time.time() * 1000),
            f["rows"],
            f.get("stats"),
        )
        for f in files
    ]


def _replacement(adds: list, current: dict[str, dict], kept: set[str], date: str) -> tuple[list, str]:
    """The actions and mode of a commit replacing the date's `current` files by `adds`.

    An overwrite lets delta-rs remove every current file of the date after our adds; a path both
    added and removed in one commit is read differently by engines that do not order actions within a
    commit, so a replacement keeping some files (`kept`) removes the others itself and appends."""
    # lazy: deltalake loads its Rust library; only table reads and commits need it
    from deltalake.transaction import RemoveAction

    if not kept:
        return adds, "overwrite"
    now = int(time.time() * 1000)
    removes = [
        RemoveAction(p, True, now, f["size"], {PARTITION: date}) for p, f in current.items() if p not in kept
    ]
    return removes + [a for a in adds if a.path not in kept], "append"


def commits_by_run(out: str, name: str, date: str, run_id: str, since: int | None) -> list[int]:
    """Versions after `since` (None: all) in which run `run_id` committed `date` to the table."""
    dt = open_table(out, name)
    if dt is None:
        return []
    found = []
    for v in range((since if since is not None else -1) + 1, dt.version() + 1):
        meta = commit_meta(read_log_entry(out, name, v))
        if meta.get("run_id") == run_id and meta.get("date") in (date, None):
            found.append(v)
    return found


def tracked(out: str, name: str, date: str, dt) -> tuple[set[str], set[str]]:  # noqa: ANN001
    """What the table's log still tracks of `date`: (paths, run ids). Paths: files the latest version
    holds, and files removed (tombstones) that the last checkpoint or a later commit records; run
    ids: those of the commits since the last checkpoint.

    Reads the last checkpoint and the commits after it, never the older history: a file removed so long
    ago that the checkpoint dropped its tombstone is one vacuum would delete too.
    """
    logged, runs = logged_since_checkpoint(out, name, date, dt.version())
    return {f["path"] for f in partition_files(dt, date)} | logged, runs


def history(out: str, name: str) -> list[dict]:
    """This project's commits of a table, oldest first: {version, timestamp, operation, **metadata}."""
    dt = open_table(out, name)
    if dt is None:
        return []
    rows = [
        {"version": h["version"], "timestamp": h.get("timestamp"), **meta}
        for h in dt.history()
        if (meta := meta_of(h)) is not None
    ]
    return sorted(rows, key=lambda r: r["version"])


def refuse_legacy(out: str) -> None:
    """Never mix layouts: an OUT written as plain Parquet directories must be migrated first."""
    if legacy_manifests(out):
        raise ConfigError(
            f"{out} holds partitions written as plain Parquet directories, before outputs became Delta "
            f"tables. Convert them in place (the files are kept, one Delta commit per dataset) with: "
            f"xlmflow migrate --out {out}"
        )
