"""One date partition of OUT, from taking its lease to giving it back: the one owner of its life.

Commit protocol (same on local disk and S3, where there is no rename):
1. data files are written under names unique to this run (xlmflow.part_files), never overwritten;
2. each dataset's table gets one Delta commit that replaces the date's files by the new ones
   (xlmflow.delta.replace_files), in a fixed order, each against the version the run saw when it started;
3. the manifest `OUT/_manifests/date=D.json` is written last, in one atomic PUT/rename: the partition is
   committed exactly when it exists; it pins the table version of every dataset it committed.
Superseded files stay until `xlmflow vacuum`, so a reader of an older version can finish. All of it
happens while `Partition` holds the partition's lease (xlmflow.lease); the table commits are fenced by it.
Readers that go through the manifest (`xlmflow.read`) never see a mix of two runs' tables.

Around the commit: debris removal (files of runs that failed before committing), realignment (tables a
run changed before it crashed short of its manifest), cleanup, the date's history and restore
(xlmflow.history).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Iterator

from xlmflow import delta, delta_schema, history, storage
from xlmflow.errors import FatalError
from xlmflow.lease import PartitionLease
from xlmflow.manifest import archived_runs, read_manifest, write_manifest
from xlmflow.part_files import PART_NAME, partition_dir
from xlmflow.settings import LEASE_TTL

log = logging.getLogger(__name__)


class PinnedFilesGoneError(FatalError):
    """Files a committed manifest pins are missing: the partition must be computed again."""


class Partition:
    """The partition `date` of `out`. While `held`, it holds the partition's lease for `owner_id` (a run,
    a restore; a fresh id when not given): everything that changes the partition happens then.

    `datasets`: the datasets whose directories may hold files of this date besides those the manifest
    lists (the caller knows them: the processors' datasets); the debris check looks there too.
    """

    def __init__(
        self,
        out: str,
        date: str,
        owner_id: str | None = None,
        lease_ttl: float = LEASE_TTL,
        datasets: Iterable[str] = (),
    ) -> None:
        self.out, self.date, self.owner_id = out, date, owner_id or uuid.uuid4().hex
        self.lease_ttl = lease_ttl
        self.datasets = tuple(datasets)
        self.lease: PartitionLease | None = None  # while held
        self.base_versions: dict[str, int | None] = {}

    @contextlib.contextmanager
    def held(self, timeout: float, on_wait: Callable[[str], None] | None = None) -> Iterator[Partition]:
        """Hold the partition's lease for the block (waiting up to `timeout` s for another owner)."""
        self.lease = PartitionLease(self.out, self.date, self.owner_id, self.lease_ttl)
        self.lease.acquire(timeout, on_wait=on_wait)
        try:
            yield self
        finally:
            self.lease.release()
            self.lease = None

    def check(self) -> None:
        """Fence: raises LeaseLostError if another run took the partition over (a stalled owner)."""
        if self.lease is None:
            raise FatalError(f"partition {self.date}: changed without holding its lease (this is a bug)")
        self.lease.check()

    def manifest(self) -> dict | None:
        """The committed manifest of the date, None when the date is not committed."""
        return read_manifest(self.out, self.date)

    def snapshot(self, names: Iterable[str]) -> dict[str, int | None]:
        """Each table's version now: the commit refuses if another run commits this date meanwhile."""
        self.base_versions = delta.snapshot(self.out, list(names))
        return self.base_versions

    def remove_debris(self, manifest: dict | None, config_hash: str) -> int:
        return remove_debris(self.out, self.date, manifest, config_hash, self.datasets)

    def realign(self, manifest: dict) -> list[str]:
        return realign_tables(self.out, self.date, manifest)

    def cleanup(self, manifest: dict, debris: bool = True) -> int:
        return cleanup_partition(self.out, self.date, manifest, debris, self.datasets)

    def commit(
        self, files: dict[str, list[dict]], file_schemas: dict, manifest: dict, checkpoint_interval=None
    ) -> dict:  # noqa: ANN001
        """Commit the files the writers reported, then the manifest; then the committed staging goes."""
        commit_tables(
            self.out,
            self.date,
            files,
            file_schemas,
            self.base_versions,
            manifest,
            self.check,
            checkpoint_interval,
        )
        self.cleanup(manifest, debris=False)  # debris was removed before the run started
        return manifest

    def history(self) -> list[dict]:
        """The runs committed for the date, oldest first (xlmflow.history.runs_of)."""
        return history.runs_of(self.out, self.date)

    def restore(self, run_id: str) -> dict:
        """Make `run_id`'s committed files the date's current ones; returns the new manifest."""
        return history.restore_run(self.out, self.date, run_id, self.owner_id, self.check)


def commit_tables(
    out: str,
    date: str,
    files: dict[str, list[dict]],
    file_schemas: dict,
    base_versions: dict,
    manifest: dict,
    fence: Callable[[], None] | None = None,
    checkpoint_interval: int | None = None,
) -> dict:
    """Commit each dataset's files to its table (in `files` order), then the manifest that pins them.
    Then each table gets a checkpoint when `checkpoint_interval` commits have passed since its last one.

    On failure the part files of tables this run did not commit are removed; those of tables it did
    commit stay (that table version references them) until a later run replaces them.
    """
    versions: dict[str, int] = {}
    tables: dict = {}
    meta = commit_metadata(manifest)
    try:
        for name, fs in files.items():
            if file_schemas.get(name) is None and not delta.has_table(out, name):
                continue  # nothing was ever written for this dataset: no table to create
            if fence:
                fence()  # renews the lease before each commit, or refuses to commit
            schema = file_schemas.get(name) or delta_schema.file_schema(delta.open_table(out, name))
            table = delta_schema.ensure_table(out, name, schema)
            versions[name] = delta.replace_files(out, name, date, fs, base_versions.get(name), meta, table)
            log.info("partition %s: committed table %s version %d", date, name, versions[name])
            tables[name] = table
        manifest["tables"] = versions
        if fence:
            fence()
        write_manifest(out, manifest)  # the commit point
    except BaseException:
        _remove_uncommitted(out, date, files, versions, manifest["run_id"], base_versions)
        raise
    # after the commit point: a checkpoint is due only now and then and takes a while, and a crash
    # between the table commits and the manifest must stay as short as it can
    for name, table in tables.items():
        delta.checkpoint(out, name, checkpoint_interval, table, versions[name])
    return manifest


def _remove_uncommitted(
    out: str, date: str, files: dict, versions: dict, run_id: str, base_versions: dict
) -> None:
    """After a failed commit: remove the files of the tables no version may reference."""
    if _committed_by(out, date, run_id):
        return
    unreferenced = [
        n for n in files if n not in versions and not _maybe_committed(out, n, date, run_id, base_versions)
    ]
    storage.remove([storage.join(out, f["path"]) for n in unreferenced for f in files[n]])


def _maybe_committed(out: str, name: str, date: str, run_id: str, base_versions: dict) -> bool:
    """Whether a commit of this run may be in the table although replace_files did not return
    (its outcome could not be read back): such files must stay, a table version may reference them."""
    try:
        return bool(delta.commits_by_run(out, name, date, run_id, base_versions.get(name)))
    except Exception:  # noqa: BLE001 - unknown: keep the files; the next run's debris check decides
        return True


def _committed_by(out: str, date: str, run_id: str) -> bool:
    try:
        m = read_manifest(out, date)
    except Exception:  # noqa: BLE001 - unknown: keep the files, the next run's cleanup decides
        return True
    return bool(m and m.get("run_id") == run_id)


def commit_metadata(manifest: dict) -> dict:
    """What goes with each table commit: enough to list and account for the run without the manifest."""
    keys = ("run_id", "date", "config_hash", "flow_run_id", "code_version", "finished_at", "models", "counts")
    fp = json.dumps(manifest.get("input_fingerprint") or [], sort_keys=True).encode()
    return {
        "operation": "write",
        **{k: manifest.get(k) for k in keys if k in manifest},
        "input_files": len(manifest.get("input_fingerprint") or []),
        "input_fingerprint_sha256": hashlib.sha256(fp).hexdigest(),
    }


def realign_tables(out: str, date: str, manifest: dict) -> list[str]:
    """Make each table's latest files for `date` the ones the manifest pins; returns the tables changed.

    Needed only after a run crashed between its table commits and its manifest: those tables then hold
    rows of a run that never completed. Called with the partition's lease held.
    """
    changed = []
    for name, version in (manifest.get("tables") or {}).items():
        table = delta.open_table(out, name)
        if table is None or table.version() == version:
            continue
        pinned = _pinned_if_moved(out, name, date, version, table, manifest)
        if pinned is None:
            continue
        meta = {**commit_metadata(manifest), "operation": "realign", "realigned_to_version": version}
        delta.replace_files(out, name, date, pinned, table.version(), meta, table)
        delta.checkpoint(out, name)
        changed.append(name)
    return changed


def _pinned_if_moved(
    out: str, name: str, date: str, version: int, table, manifest: dict
) -> list[dict] | None:  # noqa: ANN001
    """The files `version` holds of the date when the table's latest ones differ, None when they agree;
    PinnedFilesGoneError when some of them are gone."""
    latest = {f["path"] for f in delta.partition_files(table, date)}
    listed = {f["path"].split("/", 1)[1] for f in (manifest.get("files") or {}).get(name) or []}
    if listed and latest == listed:
        return None  # the files the manifest lists are those of the version it pins: nothing to read
    pinned = delta.files_for_commit(out, name, date, version)
    if latest == {f["path"].split("/", 1)[1] for f in pinned}:
        return None
    present = {u.rsplit("/", 1)[-1] for u in storage.list_files(partition_dir(out, name, date))}
    gone = [f["path"] for f in pinned if f["path"].rsplit("/", 1)[-1] not in present]
    if gone:  # pointing the table at them would break every reader of its latest version
        raise PinnedFilesGoneError(
            f"partition {date}: table {name} version {version}, which the manifest pins, lost "
            f"{len(gone)} of its files (e.g. {gone[0]}; deleted by hand or by an older vacuum)"
        )
    return pinned


def _date_runs(out: str, date: str, manifest: dict | None) -> set[str]:
    """Run ids whose manifest for `date` was written: the current one and the archived ones, and the
    migrations that rewrote the current run's files."""
    runs = set(archived_runs(out, date)) | set((manifest or {}).get("migrations") or [])
    return runs | ({manifest["run_id"]} if (manifest or {}).get("run_id") else set())


def _datasets(manifest: dict | None, datasets: Iterable[str]) -> list[str]:
    """Datasets whose partition may hold our files: the caller's, and the manifest's."""
    return sorted({*datasets, *((manifest or {}).get("files") or {})})


def _unknown(uri: str, date: str, paths: set[str], keep: set[str]) -> bool:
    """A part file of ours, of no run in `keep` (8-hex prefixes) and not among the table's `paths`."""
    base = uri.rsplit("/", 1)[-1]
    m = PART_NAME.match(base)
    return bool(m) and m.group(1) not in keep and f"date={date}/{base}" not in paths


def find_debris(out: str, date: str, manifest: dict | None = None, datasets: Iterable[str] = ()) -> list[str]:
    """Part files of the date that no commit of their table added: what runs left that failed or were
    killed before they committed that table. Files the table's log still tracks (its latest version's,
    removed ones whose tombstones it keeps) are kept, vacuum decides about those; so are files of runs
    that committed the date, and files not named like ours.

    Reads each table's log from its last checkpoint only (xlmflow.delta.tracked), so the check costs
    the same after years of commits."""
    stale = []
    runs = None
    for n in _datasets(manifest, datasets):
        found = storage.list_files(partition_dir(out, n, date))
        if not found:
            continue
        if runs is None:
            runs = {r[:8] for r in _date_runs(out, date, manifest)}
        doubt = [u for u in found if _unknown(u, date, set(), runs)]
        table = delta.open_table(out, n) if doubt else None
        if table is not None:  # files of no run whose manifest the date has: ask the table and its log
            paths, committed = delta.tracked(out, n, date, table)
            doubt = [u for u in doubt if _unknown(u, date, paths, runs | {r[:8] for r in committed})]
        stale += doubt
    return stale


def cleanup_partition(
    out: str, date: str, manifest: dict, debris: bool = True, datasets: Iterable[str] = ()
) -> int:
    """After a commit: delete debris of failed runs and the committed configuration's staging.

    Only called with the partition's lease held, so no other run has files in flight here. Staging of
    other configurations is left alone (a run of that configuration may resume from it). Files of
    superseded versions stay until `xlmflow vacuum`.
    """
    stale = find_debris(out, date, manifest, datasets) if debris else []
    storage.remove(stale)
    if manifest.get("config_hash"):
        storage.remove([storage.join(out, "_staging", f"date={date}", manifest["config_hash"])])
    _remove_empty_dir(storage.join(out, "_staging", f"date={date}"))
    return len(stale)


def remove_debris(
    out: str, date: str, manifest: dict | None, config_hash: str, datasets: Iterable[str] = ()
) -> int:
    """Before a run: delete what failed or killed runs left (uncommitted part files, partial temp files).

    Only called with the partition's lease held. The run's own staging is kept: finished shards in it
    are what a resumed run picks up.
    """
    stale = find_debris(out, date, manifest, datasets)
    storage.remove(stale)
    n = len(stale)
    prefixes = [storage.join(out, "_staging", f"date={date}", config_hash), storage.join(out, "_manifests")]
    prefixes += [partition_dir(out, d, date) for d in _datasets(manifest, datasets)]
    for prefix in prefixes:
        n += storage.remove_stale_tmp(prefix)
    return n


def _remove_empty_dir(uri: str) -> None:
    if not storage.is_remote(uri):
        try:
            os.rmdir(uri)
        except OSError:
            pass  # not empty (another configuration's staging) or already gone
