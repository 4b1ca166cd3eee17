"""Collect a run's outputs: account for every input row, have writer tasks write the Parquet files, and
hand the files and the manifest to the partition (xlmflow.partition.Partition.commit, manifest last).

The driver never reads a dataset: it plans the writer tasks from the staged files' summaries, and
refuses to commit when the rows written do not reconcile with the rows read.
"""

from __future__ import annotations

import collections
import datetime as dt
from dataclasses import dataclass, field

import pyarrow as pa

from xlmflow import storage
from xlmflow.errors import FatalError
from xlmflow.manifest import MANIFEST_VERSION
from xlmflow.part_files import part_uri
from xlmflow.partition import Partition
from xlmflow.ray_cluster.actor import results_uri
from xlmflow.ray_cluster.registry import known_datasets, registry, run_datasets, run_declarations
from xlmflow.records import IngestResult, ProcessResult, RunFacts, WrittenPart
from xlmflow.tasks.report import dataset_stats
from xlmflow.tasks.write import plan_parts, write_part

REJECT_BYTES = 300  # estimated bytes of a reject row, to size the writer tasks' parts


def datasets_for(settings) -> list[str]:  # noqa: ANN001
    """The datasets a run commits, in order: the main record, its processors' datasets, rejects."""
    return list(run_datasets(settings))


def partition_datasets(settings) -> list[str]:  # noqa: ANN001
    """Datasets whose partition directories a run's debris check looks at: every registered type's."""
    return sorted({*known_datasets(), *datasets_for(settings)})


@dataclass
class _Tally:
    """The counts a run adds up from the task summaries, and each dataset's staged sources."""

    sources: dict[str, list[tuple[dict, int]]]
    rows: collections.Counter[str] = field(default_factory=collections.Counter)
    by_reason: collections.Counter[str] = field(default_factory=collections.Counter)
    by_lang: collections.Counter[str] = field(default_factory=collections.Counter)
    sections: dict[str, collections.Counter[str]] = field(default_factory=dict)  # processors' count sections
    per_instance: dict[str, collections.Counter[str]] = field(default_factory=dict)


def commit_outputs(
    settings,  # noqa: ANN001
    partition: Partition,
    ingest: IngestResult,
    processed: ProcessResult,
    facts: RunFacts,
    runner,  # noqa: ANN001 - the ingest's task runner (ray_cluster.ingest_pipeline.TaskRunner)
) -> dict:
    """Have writer tasks write the Parquet files, then commit them and the manifest through `partition`
    (its lease held, its snapshot taken at the start of the run); returns the manifest."""
    declared = run_declarations(settings)
    names = list(declared)
    tally = _tally(settings, ingest, processed, names)
    manifest = _manifest(settings, ingest, processed, facts, _counts(settings, ingest, tally, names))
    calls = _writer_calls(settings, declared, tally.sources, facts.run_id)
    uris = [call[2] for call in calls]
    try:
        results = runner.run_all(write_part, calls)
    except BaseException:
        storage.remove(uris)
        raise
    by_name: dict[str, list[WrittenPart]] = {n: [] for n in names}
    for r in results:
        by_name[r.dataset].append(r)
    files = {n: [r.file for r in rs] for n, rs in by_name.items()}
    _check_written(settings, files, manifest["counts"], uris)
    file_schemas = {
        n: pa.ipc.read_schema(pa.py_buffer(rs[0].schema)) if rs else None for n, rs in by_name.items()
    }
    # the statistics go into the tables' add actions only: the manifest lists the files
    manifest["files"] = {
        n: [{k: v for k, v in f.items() if k != "stats"} for f in fs] for n, fs in files.items()
    }
    manifest["nodes"]["writers"] = sorted({r.node_id for r in results if r.node_id})
    manifest.update(dataset_stats(by_name, declared))
    return partition.commit(files, file_schemas, manifest, settings.checkpoint_interval)


def _writer_calls(settings, declared: dict, sources: dict, run_id: str) -> list[tuple]:  # noqa: ANN001
    """One write_part call per part of each dataset, in dataset order."""
    date = settings.date.isoformat()
    calls = []
    for n, d in declared.items():
        empty = d.schema.serialize().to_pybytes() if d.schema is not None else None
        for i, part in enumerate(plan_parts(sources[n], settings.target_file_bytes)):
            # every dataset gets a file, so readers find its schema on empty days (unless its schema
            # is known only once a model is loaded)
            if part or empty is not None:
                uri = part_uri(settings.out, n, date, run_id, i)
                calls.append((settings.out, n, uri, part, empty, d.aggregates))
    return calls


def _main_dataset(settings) -> str:  # noqa: ANN001
    return "pairs" if settings.mode == "pairs" else "documents"


def _check_written(settings, files: dict[str, list[dict]], counts: dict, uris: list[str]) -> None:  # noqa: ANN001
    """Never commit a partition that loses or invents rows: the files written must hold the counts."""
    written = {n: sum(f["rows"] for f in fs) for n, fs in files.items()}
    if written[_main_dataset(settings)] != counts["documents"] or written["rejects"] != counts["rejects"]:
        storage.remove(uris)
        raise FatalError(
            f"the files written do not reconcile with the counts: {written} vs {counts}; the partition was not "
            "committed (this is a bug, please report)"
        )


def _tally(settings, ingest: IngestResult, processed: ProcessResult, names: list[str]) -> _Tally:  # noqa: ANN001
    """Add up the task summaries: rejects of the split tasks and of dedup, then every shard's outcome."""
    tally = _Tally(
        sources={n: [] for n in names},
        per_instance={s.name: collections.Counter() for s in settings.processors},
    )
    _tally_ingest_rejects(tally, ingest, processed)
    for shard in sorted(processed.shards, key=lambda s: s["shard_id"]):
        sid = shard["shard_id"]
        if sid in processed.failed:
            tally.by_reason["shard_failed"] += shard["rows"]
            src = {"kind": "failed", "shard": shard, "error": processed.failed[sid]}
            tally.sources["rejects"].append((src, REJECT_BYTES * shard["rows"]))
        else:
            _tally_shard(tally, ingest.staging, sid, processed.done[sid], names)
    return tally


def _tally_ingest_rejects(tally: _Tally, ingest: IngestResult, processed: ProcessResult) -> None:
    """The rejects of the split tasks (bad rows) and of the content stage (duplicates)."""
    for s in ingest.splits:
        tally.by_reason.update(s["rejects_by_reason"])
        if s["rejects"]:
            offsets = {k: ingest.pieces[int(k)]["offset"] for k in s["spans"]}
            src = {"kind": "split_rejects", "uri": s["uris"]["rejects"],
                   "index": s["index_by_bucket"]["rejects"][0], "offsets": offsets}  # fmt: skip
            tally.sources["rejects"].append((src, REJECT_BYTES * s["rejects"]))
    for summary in processed.content:
        tally.by_reason.update(summary["rejects_by_reason"])
        if summary["rejects"]:
            src = {"kind": "batches", "uri": summary["rejects_uri"], "index": summary["rejects_index"]}
            tally.sources["rejects"].append((src, REJECT_BYTES * summary["rejects"]))


def _tally_shard(tally: _Tally, staging: str, sid: str, stats: dict, names: list[str]) -> None:
    """One finished shard: its counts, processor counters and staged files."""
    stray = set(stats["counts"]) - set(names)
    if stray:  # staged by an actor but not a dataset of this run: it would never be committed
        raise FatalError(
            f"shard {sid} staged datasets {sorted(stray)} that no processor of the run declares; the "
            "partition was not committed (this is a bug, please report)"
        )
    tally.by_reason.update(stats["rejects_by_reason"])
    tally.by_lang.update(stats["by_lang"])
    for inst, pstats in (stats.get("processors") or {}).items():
        counters = pstats.get("counters") or {}
        tally.per_instance.setdefault(inst, collections.Counter()).update(counters)
    for key, section in (stats.get("count_sections") or {}).items():
        tally.sections.setdefault(key, collections.Counter()).update(section)
    for n in names:
        rows = stats["counts"].get(n, 0)
        tally.rows[n] += rows
        if rows:
            uri = storage.join(results_uri(staging, sid), f"{n}.arrow")
            size = (stats.get("bytes") or {}).get(n, REJECT_BYTES * rows)
            tally.sources[n].append(({"kind": "ipc", "uri": uri}, size))


def _counts(settings, ingest: IngestResult, tally: _Tally, names: list[str]) -> dict:  # noqa: ANN001
    """The manifest's counts; FatalError unless every input row is an output row or a reject."""
    main = _main_dataset(settings)
    n_rejects = sum(tally.by_reason.values())
    counts = {
        "input_rows": ingest.input_rows,
        "documents": tally.rows[main],
        "rejects": n_rejects,
        "rejects_by_reason": dict(sorted(tally.by_reason.items())),
        "by_lang": dict(sorted(tally.by_lang.items())),
        **{k: dict(sorted(v.items())) for k, v in tally.sections.items() if v},
        **{n: tally.rows[n] for n in names if n not in (main, "rejects")},
        "processors": {k: dict(sorted(v.items())) for k, v in tally.per_instance.items()},
    }
    if ingest.input_rows != tally.rows[main] + n_rejects:
        raise FatalError(  # never commit a partition that loses or invents rows
            f"row accounting does not reconcile: {counts}; the partition was not committed "
            "(this is a bug, please report)"
        )
    return counts


def _manifest(
    settings, ingest: IngestResult, processed: ProcessResult, facts: RunFacts, counts: dict
) -> dict:  # noqa: ANN001
    """The manifest, but for the files and the table versions (the commit adds those)."""
    is_empty = counts["input_rows"] == 0
    actor_nodes = {a["node_id"] for a in facts.actors if a.get("node_id")}
    shard_nodes = {
        d["actor"]["node_id"] for d in processed.done.values() if d.get("actor", {}).get("node_id")
    }
    return {
        "manifest_version": MANIFEST_VERSION,
        "date": settings.date.isoformat(),
        **facts.as_manifest(),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(),
        "config_hash": settings.config_hash(),
        # `resolved` is derived from the rest (and in the config hash): not part of the manifest's settings
        "settings": settings.model_dump(mode="json", exclude={"out", "resolved"}),
        "processors": processor_records(settings, facts.models),
        "input_files": [e["path"] for e in ingest.listing],
        "counts": counts,
        "shards": {"total": len(processed.shards), "failed": sorted(processed.failed)},
        "ingest": {"splits": len(ingest.splits), "dedup_buckets": ingest.buckets},
        "nodes": {
            "ingest": sorted({s["node_id"] for s in ingest.splits if s.get("node_id")}),
            # where the pool's actors started, and where shards were processed
            "actors": sorted(actor_nodes | shard_nodes),
        },
        "empty": is_empty,
        **({"note": "the inputs held no rows: this partition is committed empty"} if is_empty else {}),
    }


def processor_records(settings, models: dict) -> list[dict]:  # noqa: ANN001
    """Each instance of the run: name, type, code version, options, and the model it resolved."""
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
