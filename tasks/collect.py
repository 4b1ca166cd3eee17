"""Collect shard results into the Delta tables and commit the partition with a manifest written last.

Commit protocol (same on local disk and S3, where there is no rename):
1. data files are written under names unique to this run (`part-<run>-<n>.parquet`), never overwritten;
2. each dataset's table gets one Delta commit that removes the date's previous files and adds the new
   ones (xlmflow.delta), in a fixed order, each against the version the run saw when it started;
3. the manifest `OUT/_manifests/date=D.json` is written last, in one atomic PUT/rename: the partition is
   committed exactly when it exists; it pins the table version of every dataset it committed.
Superseded files stay until `xlmflow vacuum`, so a reader of an older version can finish. All of it
happens while the run holds the partition's lease (xlmflow.lease); the table commits are fenced by it.
Readers that go through the manifest (`xlmflow.read`) never see a mix of two runs' tables.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import re

from xlmflow import delta, storage
from xlmflow.errors import FatalError
from xlmflow.manifest import (  # noqa: F401 - part of this module's interface
    MANIFEST_VERSION,
    archived_runs,
    manifest_uri,
    read_manifest,
    run_manifest_uri,
    write_manifest,
)

log = logging.getLogger(__name__)

# part files are named by the first 8 hex digits of the run that wrote them
_PART_NAME = re.compile(r"^part-([0-9a-f]{8})-\d+\.parquet$")


def partition_dir(out: str, dataset: str, date: str) -> str:
    return storage.join(out, dataset, f"date={date}")


def datasets_for(settings) -> list[str]:  # noqa: ANN001
    """The datasets a run commits, in order: the main record, its processors' datasets, rejects."""
    from ray_cluster.processors.base import run_datasets

    return list(run_datasets(settings))


def collect_partition(
    settings,  # noqa: ANN001
    ing: dict,
    shards: list[dict],
    done: dict[str, dict],
    failed: dict[str, str],
    content: list[dict],
    run: dict,
    fence=None,  # noqa: ANN001 - callable raising if this run no longer holds the partition
    base_versions: dict | None = None,
) -> dict:
    """Have writer tasks write the Parquet files, commit them to the Delta tables, write the manifest.

    `ing`: ray_cluster.ingest_pipeline.read_inputs's result; `content`: the content reducers' summaries;
    `base_versions`: each table's version when the run started (xlmflow.delta.snapshot).
    """
    import pyarrow as pa

    from ray_cluster.processors.registry import run_declarations
    from tasks.write import part_uri, plan_parts, write_part

    date = settings.date.isoformat()
    declared = run_declarations(settings)
    names = list(declared)
    manifest, sources = _account(settings, ing, shards, done, failed, content, run, names)
    calls = []
    for n in names:
        parts = plan_parts(sources[n], settings.target_file_bytes)
        schema, aggs = declared[n].schema, declared[n].aggregates
        empty = schema.serialize().to_pybytes() if schema is not None else None
        for i, part in enumerate(parts):
            # every dataset gets a file, so readers find its schema on empty days (unless its schema
            # is known only once a model is loaded)
            if part or empty is not None:
                uri = part_uri(settings.out, n, date, run["run_id"], i)
                calls.append((settings.out, n, uri, part, empty, aggs))
    uris = [call[2] for call in calls]
    try:
        results = ing["runner"].run_all(write_part, calls)
    except BaseException:
        storage.remove(uris)
        raise
    by_name: dict[str, list[dict]] = {n: [] for n in names}
    for call, r in zip(calls, results, strict=True):
        by_name[call[1]].append(r)
    files = {n: [r["file"] for r in rs] for n, rs in by_name.items()}
    schemas_ = {
        n: pa.ipc.read_schema(pa.py_buffer(rs[0]["schema"])) if rs else None for n, rs in by_name.items()
    }
    written = {n: sum(f["rows"] for f in fs) for n, fs in files.items()}
    main = "pairs" if settings.mode == "pairs" else "documents"
    counts = manifest["counts"]
    if written[main] != counts["documents"] or written["rejects"] != counts["rejects"]:
        storage.remove(uris)
        raise FatalError(  # never commit a partition that loses or invents rows
            f"the files written do not reconcile with the counts: {written} vs {counts}; the partition was not "
            "committed (this is a bug, please report)"
        )
    # the statistics go into the tables' add actions only: the manifest lists the files
    manifest["files"] = {
        n: [{k: v for k, v in f.items() if k != "stats"} for f in fs] for n, fs in files.items()
    }
    manifest["nodes"]["writers"] = sorted({r["node_id"] for r in results if r.get("node_id")})
    manifest.update(report_stats(by_name))
    commit_tables(
        settings.out,
        date,
        files,
        schemas_,
        base_versions or {},
        manifest,
        fence,
        checkpoint_interval=settings.checkpoint_interval,
    )
    cleanup_partition(settings.out, date, manifest, debris=False)  # removed before the run started
    return manifest


def report_stats(by_name: dict[str, list[dict]]) -> dict:
    from tasks.report import dataset_stats

    return dataset_stats(by_name)


def commit_tables(
    out: str,
    date: str,
    files: dict[str, list[dict]],
    file_schemas: dict,
    base_versions: dict,
    manifest: dict,
    fence=None,  # noqa: ANN001
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
            schema = file_schemas.get(name) or delta.file_schema(delta.open_table(out, name))
            table = delta.ensure_table(out, name, schema)
            versions[name] = delta.commit_partition(out, name, date, fs, base_versions.get(name), meta, table)
            log.info("partition %s: committed table %s version %d", date, name, versions[name])
            tables[name] = table
        manifest["tables"] = versions
        if fence:
            fence()
        write_manifest(out, manifest)  # the commit point
    except BaseException:
        if not _committed_by(out, date, manifest["run_id"]):
            run_id = manifest["run_id"]
            unreferenced = [
                n
                for n in files
                if n not in versions and not _maybe_committed(out, n, date, run_id, base_versions)
            ]
            storage.remove([storage.join(out, f["path"]) for n in unreferenced for f in files[n]])
        raise
    # after the commit point: a checkpoint is due only now and then and takes a while, and a crash
    # between the table commits and the manifest must stay as short as it can
    for name, table in tables.items():
        delta.checkpoint(out, name, checkpoint_interval, table, versions[name])
    return manifest


def _maybe_committed(out: str, name: str, date: str, run_id: str, base_versions: dict) -> bool:
    """Whether a commit of this run may be in the table although commit_partition did not return
    (its outcome could not be read back): such files must stay, a table version may reference them."""
    try:
        return bool(delta.commits_by_run(out, name, date, run_id, base_versions.get(name)))
    except Exception:  # noqa: BLE001 - unknown: keep the files; the next run's debris check decides
        return True


class PinnedFilesGoneError(FatalError):
    """Files a committed manifest pins are missing: the partition must be computed again."""


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
        latest = {f["path"] for f in delta.partition_files(table, date)}
        listed = {f["path"].split("/", 1)[1] for f in (manifest.get("files") or {}).get(name) or []}
        if listed and latest == listed:
            continue  # the files the manifest lists are those of the version it pins: nothing to read
        pinned = delta.files_for_commit(out, name, date, version)
        if latest == {f["path"].split("/", 1)[1] for f in pinned}:
            continue
        present = {u.rsplit("/", 1)[-1] for u in storage.list_files(partition_dir(out, name, date))}
        gone = [f["path"] for f in pinned if f["path"].rsplit("/", 1)[-1] not in present]
        if gone:  # pointing the table at them would break every reader of its latest version
            raise PinnedFilesGoneError(
                f"partition {date}: table {name} version {version}, which the manifest pins, lost "
                f"{len(gone)} of its files (e.g. {gone[0]}; deleted by hand or by an older vacuum)"
            )
        meta = {**commit_metadata(manifest), "operation": "realign", "realigned_to_version": version}
        delta.commit_partition(out, name, date, pinned, table.version(), meta, table)
        delta.checkpoint(out, name)
        changed.append(name)
    return changed


def commit_metadata(manifest: dict) -> dict:
    """What goes with each table commit: enough to list and account for the run without the manifest."""
    import hashlib
    import json

    keys = ("run_id", "date", "config_hash", "flow_run_id", "code_version", "finished_at", "models", "counts")
    fp = json.dumps(manifest.get("input_fingerprint") or [], sort_keys=True).encode()
    return {
        "operation": "write",
        **{k: manifest.get(k) for k in keys if k in manifest},
        "input_files": len(manifest.get("input_fingerprint") or []),
        "input_fingerprint_sha256": hashlib.sha256(fp).hexdigest(),
    }


def _account(settings, ing, shards, done, failed, content, run, names) -> tuple[dict, dict]:  # noqa: ANN001
    """The manifest (counts reconciled from the task summaries) and each dataset's staged sources,
    as (source, estimated bytes) for the writer tasks."""
    from ray_cluster.actor import results_uri

    date = settings.date.isoformat()
    staging = ing["staging"]
    sources: dict[str, list[tuple[dict, int]]] = {n: [] for n in names}
    counts: collections.Counter[str] = collections.Counter()
    by_reason: collections.Counter[str] = collections.Counter()
    by_lang: collections.Counter[str] = collections.Counter()
    sections: dict[str, collections.Counter[str]] = {}  # what processors count for the manifest
    per_instance: dict[str, collections.Counter[str]] = {
        s.name: collections.Counter() for s in settings.processors
    }
    for s in ing["splits"]:
        by_reason.update(s["rejects_by_reason"])
        if s["rejects"]:
            offsets = {k: ing["pieces"][int(k)]["offset"] for k in s["spans"]}
            src = {"kind": "split_rejects", "uri": s["uris"]["rejects"],
                   "index": s["index_by_bucket"]["rejects"][0], "offsets": offsets}  # fmt: skip
            sources["rejects"].append((src, 300 * s["rejects"]))
    for summary in content:
        by_reason.update(summary["rejects_by_reason"])
        if summary["rejects"]:
            src = {"kind": "batches", "uri": summary["rejects_uri"], "index": summary["rejects_index"]}
            sources["rejects"].append((src, 300 * summary["rejects"]))
    for shard in sorted(shards, key=lambda s: s["shard_id"]):
        sid = shard["shard_id"]
        if sid in failed:
            by_reason["shard_failed"] += shard["rows"]
            sources["rejects"].append(
                ({"kind": "failed", "shard": shard, "error": failed[sid]}, 300 * shard["rows"])
            )
            continue
        stats = done[sid]
        stray = set(stats["counts"]) - set(names)
        if stray:  # staged by an actor but not a dataset of this run: it would never be committed
            raise FatalError(
                f"shard {sid} staged datasets {sorted(stray)} that no processor of the run declares; the "
                "partition was not committed (this is a bug, please report)"
            )
        by_reason.update(stats["rejects_by_reason"])
        by_lang.update(stats["by_lang"])
        for inst, pstats in (stats.get("processors") or {}).items():
            counters = pstats.get("counters") or {}
            per_instance.setdefault(inst, collections.Counter()).update(counters)
        for key, section in (stats.get("count_sections") or {}).items():
            sections.setdefault(key, collections.Counter()).update(section)
        for n in names:
            rows = stats["counts"].get(n, 0)
            counts[n] += rows
            if rows:
                uri = storage.join(results_uri(staging, sid), f"{n}.arrow")
                sources[n].append(
                    ({"kind": "ipc", "uri": uri}, (stats.get("bytes") or {}).get(n, 300 * rows))
                )
    main = "pairs" if settings.mode == "pairs" else "documents"
    input_rows = sum(s["input_rows"] for s in ing["splits"])
    n_rejects = sum(by_reason.values())
    manifest_counts = {
        "input_rows": input_rows,
        "documents": counts[main],
        "rejects": n_rejects,
        "rejects_by_reason": dict(sorted(by_reason.items())),
        "by_lang": dict(sorted(by_lang.items())),
        **{k: dict(sorted(v.items())) for k, v in sections.items() if v},
        **{n: counts[n] for n in names if n not in (main, "rejects")},
        "processors": {k: dict(sorted(v.items())) for k, v in per_instance.items()},
    }
    if input_rows != counts[main] + n_rejects:
        raise FatalError(  # never commit a partition that loses or invents rows
            f"row accounting does not reconcile: {manifest_counts}; the partition was not committed "
            "(this is a bug, please report)"
        )
    is_empty = input_rows == 0
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "date": date,
        **run,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(),
        "config_hash": settings.config_hash(),
        "settings": settings.model_dump(mode="json", exclude={"out"}),
        "processors": processor_records(settings, run.get("models") or {}),
        "input_files": [e["path"] for e in ing["listing"]],
        "counts": manifest_counts,
        "shards": {"total": len(shards), "failed": sorted(failed)},
        "ingest": {"splits": len(ing["splits"]), "dedup_buckets": ing["plan"].buckets},
        "nodes": {
            "ingest": sorted({s["node_id"] for s in ing["splits"] if s.get("node_id")}),
            "actors": sorted(  # where the pool's actors started, and where shards were processed
                {a["node_id"] for a in run.get("actors") or [] if a.get("node_id")}
                | {d["actor"]["node_id"] for d in done.values() if d.get("actor", {}).get("node_id")}
            ),
        },
        "empty": is_empty,
        **({"note": "the inputs held no rows: this partition is committed empty"} if is_empty else {}),
    }
    return manifest, sources


def processor_records(settings, models: dict) -> list[dict]:  # noqa: ANN001
    """Each instance of the run: name, type, code version, options, and the model it resolved."""
    from ray_cluster.processors.base import registry

    reg = registry()
    return [
        {
            "name": s.name,
            "type": s.type,
            "version": reg[s.type].code_version(),
            "options": s.options,
            "model": {k: v for k, v in (models.get(s.name) or {}).items() if k != "type"},
        }
        for s in settings.processors
    ]


def _committed_by(out: str, date: str, run_id: str) -> bool:
    try:
        m = read_manifest(out, date)
    except Exception:  # noqa: BLE001 - unknown: keep the files, the next run's cleanup decides
        return True
    return bool(m and m.get("run_id") == run_id)


def _date_runs(out: str, date: str, manifest: dict | None) -> set[str]:
    """Run ids whose manifest for `date` was written: the current one and the archived ones, and the
    migrations that rewrote the current run's files."""
    runs = set(archived_runs(out, date)) | set((manifest or {}).get("migrations") or [])
    return runs | ({manifest["run_id"]} if (manifest or {}).get("run_id") else set())


def _datasets(out: str, date: str, manifest: dict | None) -> list[str]:
    """Datasets whose partition may hold our files: every registered type's, and the manifest's."""
    from ray_cluster.processors.base import known_datasets

    return sorted({*known_datasets(), *((manifest or {}).get("files") or {})})


def _unknown(uri: str, date: str, paths: set[str], keep: set[str]) -> bool:
    """A part file of ours, of no run in `keep` (8-hex prefixes) and not among the table's `paths`."""
    base = uri.rsplit("/", 1)[-1]
    m = _PART_NAME.match(base)
    return bool(m) and m.group(1) not in keep and f"date={date}/{base}" not in paths


def _debris(out: str, date: str, manifest: dict | None = None) -> list[str]:
    """Part files of the date that no commit of their table added: what runs left that failed or were
    killed before they committed that table. Files the table's log still tracks (its latest version's,
    removed ones whose tombstones it keeps) are kept, vacuum decides about those; so are files of runs
    that committed the date, and files not named like ours.

    Reads each table's log from its last checkpoint only (xlmflow.delta.tracked), so the check costs
    the same after years of commits."""
    stale = []
    runs = None
    for n in _datasets(out, date, manifest):
        found = storage.list_files(partition_dir(out, n, date))
        if not found:
            continue
        if runs is None:
            runs = {r[:8] for r in _date_runs(out, date, manifest)}
        doubt = [u for u in found if _unknown(u, date, set(), runs)]
        dt = delta.open_table(out, n) if doubt else None
        if dt is not None:  # files of no run whose manifest the date has: ask the table and its log
            paths, committed = delta.tracked(out, n, date, dt)
            doubt = [u for u in doubt if _unknown(u, date, paths, runs | {r[:8] for r in committed})]
        stale += doubt
    return stale


def cleanup_partition(out: str, date: str, manifest: dict, debris: bool = True) -> int:
    """After a commit: delete debris of failed runs and the committed configuration's staging.

    Only called with the partition's lease held, so no other run has files in flight here. Staging of
    other configurations is left alone (a run of that configuration may resume from it). Files of
    superseded versions stay until `xlmflow vacuum`.
    """
    stale = _debris(out, date, manifest) if debris else []
    storage.remove(stale)
    if manifest.get("config_hash"):
        storage.remove([storage.join(out, "_staging", f"date={date}", manifest["config_hash"])])
    _remove_empty_dir(storage.join(out, "_staging", f"date={date}"))
    return len(stale)


def remove_debris(out: str, date: str, manifest: dict | None, config_hash: str) -> int:
    """Before a run: delete what failed or killed runs left (uncommitted part files, partial temp files).

    Only called with the partition's lease held. The run's own staging is kept: finished shards in it
    are what a resumed run picks up.
    """
    stale = _debris(out, date, manifest)
    storage.remove(stale)
    n = len(stale)
    prefixes = [storage.join(out, "_staging", f"date={date}", config_hash), storage.join(out, "_manifests")]
    prefixes += [partition_dir(out, d, date) for d in _datasets(out, date, manifest)]
    for prefix in prefixes:
        n += storage.remove_stale_tmp(prefix)
    return n


def _remove_empty_dir(uri: str) -> None:
    import os

    if not storage.is_remote(uri):
        try:
            os.rmdir(uri)
        except OSError:
            pass  # not empty (another configuration's staging) or already gone
