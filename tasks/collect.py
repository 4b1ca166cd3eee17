"""Collect shard results into Parquet datasets and commit the partition with a manifest written last.

Commit protocol (same on local disk and S3, where there is no rename):
1. data files are written under names unique to this run (`part-<run>-<n>.parquet`), never overwritten;
2. the manifest `OUT/_manifests/date=D.json` is written last, in one atomic PUT/rename: the partition is
   committed exactly when it exists, and it lists the partition's files;
3. files of the partition that the manifest does not list (a replaced run, a crashed attempt) are then
   deleted, and the run's staging area with them.
All of it happens while the run holds the partition's lease (xlmflow.lease), and the manifest write is
fenced by it: no other run of the partition writes, commits or cleans up meanwhile. Readers that go
through the manifest (`xlmflow.read`) never see a mix of old and new files.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging

from xlmflow import schemas, storage
from xlmflow.errors import FatalError

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1


def manifest_uri(out: str, date: str) -> str:
    return storage.join(out, "_manifests", f"date={date}.json")


def partition_dir(out: str, dataset: str, date: str) -> str:
    return storage.join(out, dataset, f"date={date}")


def read_manifest(out: str, date: str) -> dict | None:
    uri = manifest_uri(out, date)
    return storage.read_json(uri) if storage.exists(uri) else None


def datasets_for(tasks: tuple[str, ...], mode: str) -> list[str]:
    names = ["pairs", "qe"] if mode == "pairs" else ["documents"]
    names += [d for t, d in (("ner", "entities"), ("embed", "embeddings")) if t in tasks]
    return names + ["rejects"]


class _PartWriter:
    """Buffers tables of one dataset and writes Parquet files of about `target_bytes` each."""

    def __init__(self, out: str, dataset: str, date: str, run_id: str, target_bytes: int) -> None:
        self.out, self.dir, self.run, self.target = (
            out,
            partition_dir(out, dataset, date),
            run_id[:8],
            target_bytes,
        )
        self.buf: list = []
        self.size = 0
        self.files: list[dict] = []

    def add(self, table) -> None:  # noqa: ANN001
        if table.num_rows == 0:
            return
        self.buf.append(table)
        self.size += table.nbytes  # in-memory size: an upper bound of the compressed file size
        if self.size >= self.target:
            self.flush()

    def flush(self, force_empty=None) -> None:  # noqa: ANN001
        import pyarrow as pa

        if not self.buf and force_empty is None:
            return
        table = pa.concat_tables(self.buf) if self.buf else force_empty
        uri = storage.join(self.dir, f"part-{self.run}-{len(self.files):05d}.parquet")
        nbytes = storage.write_table_parquet(uri, table)
        self.files.append(
            {"path": uri[len(self.out.rstrip("/")) + 1 :], "rows": table.num_rows, "bytes": nbytes}
        )
        self.buf, self.size = [], 0


def collect_partition(
    settings,
    shards: list[dict],
    done: dict[str, dict],
    failed: dict[str, str],  # noqa: ANN001
    ingest_counts: dict,
    ingest_rejects,
    staging: str,
    run: dict,
    fence=None,  # noqa: ANN001 - callable raising if this run no longer holds the partition
) -> dict:
    """Write the Parquet datasets and the manifest; returns the manifest.

    A run that fails anywhere before its manifest lands removes the part files it wrote.
    """
    date = settings.date.isoformat()
    names = datasets_for(settings.tasks, settings.mode)
    writers = {
        n: _PartWriter(settings.out, n, date, run["run_id"], settings.target_file_bytes) for n in names
    }
    try:
        manifest = _write_datasets(
            settings, shards, done, failed, ingest_counts, ingest_rejects, staging, run, writers
        )
        if fence:
            fence()  # renews the lease right before the commit point, or refuses to commit
        storage.write_json(manifest_uri(settings.out, date), manifest)  # the commit point
    except BaseException:
        # our part files are unreachable without our manifest: do not leave them in the partition
        # (unless the PUT did land and only its answer was lost)
        if not _committed_by(settings.out, date, run["run_id"]):
            storage.remove([storage.join(settings.out, f["path"]) for w in writers.values() for f in w.files])
        raise
    cleanup_partition(settings.out, date, manifest)
    return manifest


def _write_datasets(
    settings, shards, done, failed, ingest_counts, ingest_rejects, staging, run, writers
) -> dict:  # noqa: ANN001
    """Write every dataset's Parquet files through `writers`; returns the manifest to commit."""
    from ray_cluster.actor import results_uri

    date = settings.date.isoformat()
    names = list(writers)
    counts: collections.Counter[str] = collections.Counter()
    by_reason: collections.Counter[str] = collections.Counter(r["reason"] for r in ingest_rejects)
    by_lang: collections.Counter[str] = collections.Counter()
    writers["rejects"].add(schemas.rejects_table(ingest_rejects))
    counts["rejects"] += len(ingest_rejects)
    for shard in shards:
        sid = shard["shard_id"]
        if sid in failed:
            rows = _shard_failed_rejects(shard, failed[sid])
            by_reason.update(r["reason"] for r in rows)
            writers["rejects"].add(schemas.rejects_table(rows))
            counts["rejects"] += len(rows)
            continue
        stats = done[sid]
        by_reason.update(stats["rejects_by_reason"])
        by_lang.update(stats["by_lang"])
        for n in names:
            uri = storage.join(results_uri(staging, sid), f"{n}.arrow")
            if n in stats["counts"] or n == "rejects":
                t = storage.read_table_ipc(uri)
                counts[n] += t.num_rows
                writers[n].add(t)
    empty = {
        "documents": schemas.DOCUMENTS,
        "pairs": schemas.PAIRS,
        "qe": schemas.QE,
        "entities": schemas.ENTITIES,
        "rejects": schemas.REJECTS,
    }
    for n, w in writers.items():
        # every dataset of the run gets at least one file, so readers find its schema on empty days
        w.flush(force_empty=empty[n].empty_table() if not w.files and n in empty else None)
    main = "pairs" if settings.mode == "pairs" else "documents"
    n_rejects = sum(by_reason.values())
    manifest_counts = {
        "input_rows": ingest_counts["input_rows"],
        "documents": counts[main],
        "rejects": n_rejects,
        "rejects_by_reason": dict(sorted(by_reason.items())),
        "by_lang": dict(sorted(by_lang.items())),
        **{n: counts[n] for n in names if n not in (main, "rejects")},
    }
    if manifest_counts["input_rows"] != counts[main] + n_rejects or counts["rejects"] != n_rejects:
        # never commit a partition that loses or invents rows
        raise FatalError(
            f"row accounting does not reconcile: {manifest_counts}, rejects written "
            f"{counts['rejects']}; the partition was not committed (this is a bug, please report)"
        )
    finished = dt.datetime.now(dt.UTC)
    is_empty = manifest_counts["input_rows"] == 0
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "date": date,
        **run,
        "finished_at": finished.isoformat(),
        "config_hash": settings.config_hash(),
        "settings": settings.model_dump(mode="json", exclude={"out"}),
        "input_files": ingest_counts.get("input_files", []),
        "files": {n: w.files for n, w in writers.items()},
        "counts": manifest_counts,
        "shards": {"total": len(shards), "failed": sorted(failed)},
        "empty": is_empty,
        **({"note": "the inputs held no rows: this partition is committed empty"} if is_empty else {}),
    }
    return manifest


def _committed_by(out: str, date: str, run_id: str) -> bool:
    try:
        m = read_manifest(out, date)
    except Exception:  # noqa: BLE001 - unknown: keep the files, the next run's cleanup decides
        return True
    return bool(m and m.get("run_id") == run_id)


def _shard_failed_rejects(shard: dict, error: str) -> list[dict]:
    t = storage.read_table_ipc(shard["uri"])
    text_col = "text" if "text" in t.column_names else "src"
    return [
        schemas.make_reject(
            r["source"],
            r["source_row"],
            "shard_failed",
            f"shard {shard['shard_id']} failed after retries: {error}; rerun with --force",
            r[text_col],
        )
        for r in t.select(["source", "source_row", text_col]).to_pylist()
    ]


DATASETS = ("documents", "pairs", "qe", "entities", "embeddings", "rejects")


def _unlisted(out: str, date: str, manifest: dict | None) -> list[str]:
    """Files under the partition's dataset directories that the manifest does not list."""
    files = manifest["files"] if manifest else {}
    listed = {storage.join(out, f["path"]) for fs in files.values() for f in fs}
    stale = []
    for n in sorted({*files, *DATASETS}):
        stale += [u for u in storage.list_files(partition_dir(out, n, date)) if u not in listed]
    return stale


def cleanup_partition(out: str, date: str, manifest: dict) -> int:
    """After a commit: delete the partition's files the manifest does not list and the run's staging.

    Only called with the partition's lease held, so no other run has files in flight here. Staging of
    other configurations is left alone (a run of that configuration may resume from it).
    """
    stale = _unlisted(out, date, manifest)
    storage.remove(stale)
    if manifest.get("config_hash"):
        storage.remove([storage.join(out, "_staging", f"date={date}", manifest["config_hash"])])
    _remove_empty_dir(storage.join(out, "_staging", f"date={date}"))
    return len(stale)


def remove_debris(out: str, date: str, manifest: dict | None, config_hash: str) -> int:
    """Before a run: delete what failed or killed runs left (unlisted part files, partial temp files).

    Only called with the partition's lease held. The run's own staging is kept: finished shards in it
    are what a resumed run picks up.
    """
    stale = _unlisted(out, date, manifest)
    storage.remove(stale)
    n = len(stale)
    for prefix in (
        storage.join(out, "_staging", f"date={date}", config_hash),
        storage.join(out, "_manifests"),
    ):
        n += storage.remove_stale_tmp(prefix)
    return n


def _remove_empty_dir(uri: str) -> None:
    import os

    if not storage.is_remote(uri):
        try:
            os.rmdir(uri)
        except OSError:
            pass  # not empty (another configuration's staging) or already gone
