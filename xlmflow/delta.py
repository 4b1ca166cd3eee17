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
from typing import Any

from xlmflow import storage
from xlmflow.errors import ConfigError, FatalError
from xlmflow.settings import CHECKPOINT_INTERVAL
from xlmflow.stats import stats_of_action

PARTITION = "date"
LOG_DIR = "_delta_log"
META_KEY = "xlmflow"  # commitInfo field holding this project's commit metadata (a JSON string)
# what of it goes into commitInfo.userMetadata, which Spark's and Databricks' DESCRIBE HISTORY show
USER_METADATA = ("operation", "run_id", "date", "config_hash", "counts", "restore_id", "replaced_run")
COMMIT_ATTEMPTS = 20  # commits of other dates that land between our look and our PUT, in a row
READ_BACK_ATTEMPTS = 4  # reads of a commit whose answer was lost (0.5 + 1 + 2 s of backoff)
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


def table_schema(file_schema) -> Any:  # noqa: ANN001
    """The Delta schema of a dataset: its file columns plus `date`. Field metadata (a vector's width)
    stays in the files: the table's columns are types alone, as every engine writes them."""
    import pyarrow as pa
    from deltalake import Schema

    fields = [f.remove_metadata() for f in file_schema if f.name != PARTITION]
    fields.append(pa.field(PARTITION, pa.string()))
    return Schema.from_arrow(pa.schema(fields))


def file_schema(dt):  # noqa: ANN001, ANN201
    """The pyarrow schema of a table's data files (its columns but `date`)."""
    import pyarrow as pa

    schema = pa.schema(dt.schema().to_arrow())
    return pa.schema([f for f in schema if f.name != PARTITION])


def _type(field) -> str:  # noqa: ANN001
    return json.dumps(json.loads(field.to_json())["type"], sort_keys=True)


def ensure_table(out: str, name: str, file_schema):  # noqa: ANN001, ANN201
    """Create the table if it is missing; add the nullable columns this run writes and it lacks;
    returns the table at its latest version. A nullable column of the table that this run's files lack
    (the processor that adds it is not in this run) reads as null in them.

    Anything else that differs (a column retyped, a required column added or left out) is refused:
    readers of older versions and other engines rely on the columns they know.
    """
    from deltalake import DeltaTable

    want = table_schema(file_schema)
    uri = table_uri(out, name)
    opts = storage_options(uri)
    dt = open_table(out, name)
    if dt is None:
        try:
            return DeltaTable.create(
                uri,
                want,
                partition_by=[PARTITION],
                mode="error",
                storage_options=opts,
                configuration=TABLE_CONFIG,
                post_commithook_properties=_no_hooks(),
            )
        except Exception:  # noqa: BLE001 - another run may have created it at the same moment
            dt = open_table(out, name)
            if dt is None:
                raise
    have = {f.name: f for f in dt.schema().fields}
    if dt.metadata().partition_columns != [PARTITION]:
        raise ConfigError(f"{uri} is a Delta table not partitioned by {PARTITION!r}; use another --out")
    wanted = {f.name: f for f in want.fields}
    # a nullable column this run does not write (its processor is not in the run) reads as null
    problems = [
        f"required column {c!r} is missing" for c, f in have.items() if c not in wanted and not f.nullable
    ]
    problems += [
        f"column {c!r} is {_type(have[c])} in the table, {_type(f)} in this run"
        for c, f in wanted.items()
        if c in have and _type(have[c]) != _type(f)
    ]
    problems += [
        f"new column {c!r} is not nullable" for c, f in wanted.items() if c not in have and not f.nullable
    ]
    if problems:
        raise ConfigError(
            f"the schema of table {uri} cannot change this way: {'; '.join(problems)}. Tables only gain "
            "nullable columns; write to a new --out (or a new table name) for other changes"
        )
    new = [f for c, f in wanted.items() if c not in have]
    if new:
        dt.alter.add_columns(new, post_commithook_properties=_no_hooks())
    return dt


def partition_files(dt, date: str) -> list[dict]:  # noqa: ANN001
    """The add actions of one date in a table version: path (relative to the table), size, rows, and
    the file's statistics as Delta's stats JSON (None when its add action had none)."""
    import pyarrow as pa
    import pyarrow.compute as pc

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
    """The date's files in a table version, in the shape `commit_partition` takes (paths under OUT)."""
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


def _no_hooks():  # noqa: ANN202
    """delta-rs' post-commit hooks off: checkpoints are ours (`checkpoint`), log cleanup is vacuum's."""
    from deltalake.transaction import PostCommitHookProperties

    return PostCommitHookProperties(create_checkpoint=False, cleanup_expired_logs=False)


def own_log_cleanup(dt) -> bool:  # noqa: ANN001
    """Turn off age-based log cleanup by other writers in a table made before it was set (one metadata
    commit); True when it was."""
    conf = dt.metadata().configuration or {}
    if all(conf.get(k) == v for k, v in TABLE_CONFIG.items()):
        return False
    dt.alter.set_table_properties(TABLE_CONFIG, post_commithook_properties=_no_hooks())
    return True


def last_checkpoint(out: str, name: str) -> int | None:
    """The version of the table's last checkpoint (`_delta_log/_last_checkpoint`); None: none yet."""
    uri = storage.join(out, name, LOG_DIR, "_last_checkpoint")
    try:
        return int(json.loads(storage.read_bytes(uri))["version"])
    except FileNotFoundError:
        return None


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


def _meta(info: dict) -> dict | None:
    """This project's metadata in a commitInfo; None for commits made by other tools."""
    try:
        return json.loads(info[META_KEY]) if info.get(META_KEY) else None
    except (TypeError, ValueError):
        return None


def commit_meta(entry: list[dict]) -> dict:
    """This project's metadata of a commit (empty for commits made by other tools)."""
    for action in entry:
        if (meta := _meta(action.get("commitInfo") or {})) is not None:
            return meta
    return {}


def _date_paths(entry: list[dict], date: str) -> list[str]:
    """The paths of `date` that a commit adds or removes."""
    return [
        act["path"]
        for action in entry
        if (act := action.get("add") or action.get("remove"))
        and (act.get("partitionValues") or {}).get(PARTITION) == date
    ]


def _touching(out: str, name: str, date: str, first: int, last: int) -> tuple[int, dict] | None:
    for v in range(first, last + 1):
        entry = read_log_entry(out, name, v)
        if _date_paths(entry, date):
            return v, commit_meta(entry)
    return None


def add_action(path: str, size: int, date: str, mtime_ms: int, rows: int, stats: str | None = None):  # noqa: ANN201
    """The Delta `add` action of one data file of `date` (path relative to the table); `stats`: its
    stats JSON (xlmflow.stats.file_stats), else only its row count."""
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


def commit_partition(
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
    from deltalake.exceptions import CommitFailedError
    from deltalake.transaction import CommitProperties

    prefix = name.strip("/") + "/"
    adds = [
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
    commit_id = uuid.uuid4().hex
    predicate = f"{PARTITION} = '{date}'"
    seen = -1 if base_version is None else base_version
    dt = table if table is not None else open_table(out, name)
    for attempt in range(COMMIT_ATTEMPTS):
        if attempt:
            dt.update_incremental()
        latest = dt.version()
        hit = _touching(out, name, date, seen + 1, latest)
        if hit:
            v, other = hit
            if other.get("commit_id") == commit_id:
                return v  # our own commit, landed by a PUT whose answer was lost
            raise CommitConflictError(
                f"table {name}: partition {date} was committed at version {v} by run "
                f"{other.get('run_id', '(unknown tool)')} after this run started; this run committed "
                "nothing more. The partition is that run's; rerun with --force to replace it"
            )
        current = {f["path"]: f for f in partition_files(dt, date)}
        kept = current.keys() & {a.path for a in adds}
        if kept and kept == current.keys() and len(kept) == len(adds):
            return latest  # the date holds exactly these files already (a restore of the current run)
        info = commit_info({**meta, "commit_id": commit_id}, predicate, latest, date=date)
        try:
            dt.create_write_transaction(
                *_replacement(adds, current, kept, date),
                schema=dt.schema(),
                partition_by=[PARTITION],
                partition_filters=[(PARTITION, "=", date)] if not kept else None,
                commit_properties=CommitProperties(custom_metadata=info, max_commit_retries=0),
                post_commithook_properties=_no_hooks(),
            )
            return latest + 1
        except Exception as exc:
            try:
                landed = commit_outcome(out, name, latest + 1, commit_id)
            except Exception as read_exc:
                raise read_exc from exc  # outcome unknown: the caller keeps this run's files
            if landed:
                log.warning("table %s: commit %d landed although its answer was lost", name, latest + 1)
                return latest + 1
            # a race (the version went to another commit) or a transport error is worth another look;
            # anything else (a schema error, a 403) is the answer itself
            if not (isinstance(exc, CommitFailedError) or (landed is False and isinstance(exc, OSError))):
                raise
            seen = latest  # version latest+1 went to someone else: look at what it did
    raise CommitConflictError(
        f"table {name}: {COMMIT_ATTEMPTS} commits of other runs landed while this one tried to commit "
        f"{date}; rerun the same command"
    )


def _replacement(adds: list, current: dict[str, dict], kept: set[str], date: str) -> tuple[list, str]:
    """The actions and mode of a commit replacing the date's `current` files by `adds`.

    An overwrite lets delta-rs remove every current file of the date after our adds; a path both
    added and removed in one commit is read differently by engines that do not order actions within a
    commit, so a replacement keeping some files (`kept`) removes the others itself and appends."""
    from deltalake.transaction import RemoveAction

    if not kept:
        return adds, "overwrite"
    now = int(time.time() * 1000)
    removes = [
        RemoveAction(p, True, now, f["size"], {PARTITION: date}) for p, f in current.items() if p not in kept
    ]
    return removes + [a for a in adds if a.path not in kept], "append"


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


def _checkpoint_removes(out: str, name: str, version: int, date: str) -> set[str]:
    """Paths of `date` that the checkpoint at `version` holds as removed (tombstones still kept)."""
    import pyarrow.parquet as pq

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


def tracked(out: str, name: str, date: str, dt) -> tuple[set[str], set[str]]:  # noqa: ANN001
    """What the table's log still tracks of `date`: (paths, run ids). Paths: files the latest version
    holds, and files removed (tombstones) that the last checkpoint or a later commit records; run
    ids: those of the commits since the last checkpoint.

    Reads the last checkpoint and the commits after it, never the older history: a file removed so long
    ago that the checkpoint dropped its tombstone is one vacuum would delete too.
    """
    paths = {f["path"] for f in partition_files(dt, date)}
    runs: set[str] = set()
    first = 0
    cp = last_checkpoint(out, name)
    if cp is not None:
        paths |= _checkpoint_removes(out, name, cp, date)
        first = cp + 1
    for v in range(first, max(dt.version(), cp if cp is not None else -1) + 1):
        entry = read_log_entry(out, name, v)
        paths.update(_date_paths(entry, date))
        meta = commit_meta(entry)
        runs.update(r for r in [meta.get("run_id"), *(meta.get("partitions") or {}).values()] if r)
    return paths, runs


def arrow_filesystem(uri: str):  # noqa: ANN201
    """Arrow's own filesystem rooted at a table, with the credentials delta-rs gets.

    deltalake's default pyarrow reader goes through a Python file handler: Arrow then holds Python
    buffers in its read-ahead cache and may free the last of them on an I/O thread after the
    interpreter began to exit, which aborts the process (exit 134, "terminate called without an
    active exception"). Arrow's native filesystems hold no Python objects.
    """
    import pyarrow.fs as pa_fs

    if not storage.is_remote(uri):
        return pa_fs.SubTreeFileSystem(uri, pa_fs.LocalFileSystem())
    opts = storage_options(uri) or {}
    kw: dict[str, Any] = {"region": opts.get("AWS_REGION")}
    if "AWS_ACCESS_KEY_ID" in opts:
        kw.update(access_key=opts["AWS_ACCESS_KEY_ID"], secret_key=opts["AWS_SECRET_ACCESS_KEY"])
        kw["session_token"] = opts.get("AWS_SESSION_TOKEN")
    if endpoint := opts.get("AWS_ENDPOINT_URL"):
        scheme, _, host = endpoint.partition("://")
        kw.update(scheme=scheme, endpoint_override=host.rstrip("/"))
    return pa_fs.SubTreeFileSystem(uri.split("://", 1)[1], pa_fs.S3FileSystem(**kw))


def partition_dataset(out: str, name: str, date: str, version: int):  # noqa: ANN201
    """The pyarrow dataset of one date in one table version: that date's files alone (the log's
    partition values prune the others before any file is opened), the `date` column included."""
    from xlmflow.settings import check_date

    dt = open_table(out, name, version)
    if dt is None:
        raise FatalError(f"no Delta table at {table_uri(out, name)}")
    pruning = f"{PARTITION} = '{check_date(date, 'date')}'"
    return dt.to_pyarrow_dataset(
        filesystem=arrow_filesystem(table_uri(out, name)), file_pruning_predicate=pruning
    )


def read_partition(out: str, name: str, date: str, version: int):  # noqa: ANN201
    """Rows of one date in one table version (the `date` column included)."""
    return partition_dataset(out, name, date, version).to_table()


def history(out: str, name: str) -> list[dict]:
    """This project's commits of a table, oldest first: {version, timestamp, operation, **metadata}."""
    dt = open_table(out, name)
    if dt is None:
        return []
    rows = [
        {"version": h["version"], "timestamp": h.get("timestamp"), **meta}
        for h in dt.history()
        if (meta := _meta(h)) is not None
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
