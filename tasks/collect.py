"""Collect shard results into Parquet datasets and commit the partition with a manifest written last.

Commit protocol (same on local disk and S3, where there is no rename):
1. data files are written under names unique to this run (`part-<run>-<n>.parquet`), never overwritten;
2. the manifest `OUT/_manifests/date=D.json` is written last, in one atomic PUT/rename: the partition is
   committed exactly when it exists, and it lists the partition's files;
3. files of the partition that the manifest does not list (a replaced run, a crashed attempt) are then
   deleted, and the staging area with them.
Readers that go through the manifest (`xlmflow.read`) never see a mix of old and new files.
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
) -> dict:
    """Write the Parquet datasets and the manifest; returns the manifest."""

    from ray_cluster.actor import results_uri

    date = settings.date.isoformat()
    names = datasets_for(settings.tasks, settings.mode)
    writers = {
        n: _PartWriter(settings.out, n, date, run["run_id"], settings.target_file_bytes) for n in names
    }
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
    }
    storage.write_json(manifest_uri(settings.out, date), manifest)  # the commit point
    cleanup_partition(settings.out, date, manifest, staging)
    return manifest


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


def cleanup_partition(out: str, date: str, manifest: dict, staging: str | None = None) -> int:
    """Delete the partition's files the manifest does not list (replaced or crashed runs) and staging."""
    listed = {storage.join(out, f["path"]) for files in manifest["files"].values() for f in files}
    stale = []
    for n in {*manifest["files"], "documents", "pairs", "qe", "entities", "embeddings", "rejects"}:
        stale += [u for u in storage.list_files(partition_dir(out, n, date)) if u not in listed]
    storage.remove(stale)
    if staging:
        storage.remove([storage.join(out, "_staging", f"date={date}")])
    return len(stale)
