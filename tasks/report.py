"""Run reporting: progress while shards finish, and a summary (table + markdown) when a partition commits."""

from __future__ import annotations

import logging
import sys
from typing import NamedTuple

from xlmflow import storage

log = logging.getLogger(__name__)

SUMMARY_LANGS = 20  # languages the end-of-run summary names; it counts the others


class Progress:
    """A terminal progress bar plus a Prefect progress artifact, updated as work items finish.

    Ingest (split tasks) and processing (shards) each get their own: a run shows how far it has read
    its input separately from how far the models are."""

    def __init__(self, total_rows: int, desc: str, artifact=None, unit: str = "doc") -> None:  # noqa: ANN001
        """`artifact`: a progress artifact of the run (create_progress_artifact), None for none."""
        # lazy: only progress bars on a terminal need it
        from tqdm import tqdm

        self.total = max(1, total_rows)
        self.done = 0
        self.bar = tqdm(
            total=total_rows, unit=unit, desc=desc, file=sys.stderr, mininterval=1.0, disable=None
        )
        self.artifact = artifact
        self.unit = unit
        self._shown = -1.0

    def advance(self, n: int) -> None:
        self.done += n
        self.bar.update(n)
        self._publish()

    def shard_done(self, stats: dict) -> None:
        self.advance(stats["rows_in"])

    def shrink(self, n: int) -> None:
        """`n` rows of the total will never come (dedup rejected them after the total was set)."""
        if n:
            self.total = max(1, self.total - n)
            self.bar.total = max(0, (self.bar.total or 0) - n)
            self.bar.refresh()
            self._publish()

    def _publish(self) -> None:
        if self.artifact is None:
            return
        pct = min(100.0, round(100.0 * self.done / self.total, 1))
        if pct == self._shown:
            return
        self._shown = pct
        try:
            # lazy: Prefect takes seconds to import; the CLI starts it after its checks
            from prefect.artifacts import update_progress_artifact

            # the artifact's own page shows its description, not its number: the description says it too
            done = min(self.done, self.total)
            update_progress_artifact(
                self.artifact.id,
                progress=pct,
                description=f"{self.artifact.description}: {pct:g}% ({done} of {self.total} {self.unit}s)",
            )
        except Exception as exc:  # noqa: BLE001
            log.debug("progress update failed: %s", exc)

    def close(self) -> None:
        self.bar.close()


class ProgressArtifact(NamedTuple):
    id: object  # the artifact's UUID
    description: str  # without the number, which each update appends


def create_progress_artifact(date: str, what: str = "progress", description: str | None = None):  # noqa: ANN201
    """A progress artifact of the run (0%), or None without a Prefect run. Created by the flow itself, so
    the UI lists it under the flow run rather than under one of its task runs."""
    try:
        # lazy: Prefect takes seconds to import; the CLI starts it after its checks
        from prefect.artifacts import create_progress_artifact as create

        description = description or f"documents processed for {date}"
        artifact_id = create(
            progress=0.0, key=_key(f"corpus-{date}-{what}"), description=f"{description}: 0%"
        )
        return ProgressArtifact(artifact_id, description)
    except Exception as exc:  # noqa: BLE001 - progress must never fail a run
        log.debug("no progress artifact: %s", exc)
        return None


def _key(s: str) -> str:
    # artifact keys: lowercase letters, digits and dashes only
    return "".join(c if c.isalnum() else "-" for c in s.lower())


def summary_rows(manifest: dict) -> list[dict]:
    """The summary as rows of (section, key, value): languages, reject reasons, datasets, throughput."""
    c = manifest["counts"]
    rows = [{"section": "counts", "key": k, "value": c[k]} for k in ("input_rows", "documents", "rejects")]
    rows += [
        {"section": "language", "key": k, "value": v}
        for k, v in sorted(c.get("by_lang", {}).items(), key=lambda kv: -kv[1])
    ]
    rows += [
        {"section": "reject_reason", "key": k, "value": v} for k, v in c.get("rejects_by_reason", {}).items()
    ]
    rows += [
        {"section": "delta_version", "key": k, "value": v} for k, v in (manifest.get("tables") or {}).items()
    ]
    rows += [
        {"section": f"label:{dataset}", "key": k, "value": v}
        for dataset, labels in (manifest.get("labels") or {}).items()
        for k, v in labels.items()
    ]
    rows += [  # what each processor instance counted (failed rows, detectors that answered, ...)
        {"section": f"processor:{inst}", "key": k, "value": v}
        for inst, counters in (c.get("processors") or {}).items()
        for k, v in counters.items()
    ]
    rows += [  # score quantiles of a dataset that declares a ScoreSample ("qe_quantiles" -> "qe_score")
        {"section": name.removesuffix("_quantiles") + "_score", "key": k, "value": v}
        for name, quantiles in manifest.items()
        if name.endswith("_quantiles") and isinstance(quantiles, dict)
        for k, v in quantiles.items()
    ]
    rows += [
        {"section": "throughput", "key": k, "value": v} for k, v in manifest.get("throughput", {}).items()
    ]
    rows += [
        {"section": "stage_seconds", "key": k, "value": v} for k, v in manifest.get("stages", {}).items()
    ]
    return rows


def dataset_stats(parts: dict[str, list], declared: dict) -> dict:
    """The manifest's figures of each dataset (label counts, score quantiles, ...): what its declared
    aggregates make of the results the writer tasks returned (xlmflow.records.WrittenPart; no data read)."""
    extra: dict = {}
    for dataset, written in parts.items():
        for agg in declared[dataset].aggregates:
            results = [w.figures[agg.key] for w in written if agg.key in w.figures]
            for key, value in (agg.summarize(dataset, results) if results else {}).items():
                if isinstance(value, dict) and isinstance(extra.get(key), dict):
                    extra[key].update(value)  # one entry per dataset under a shared key ("labels")
                else:
                    extra[key] = value
    return extra


def markdown_report(manifest: dict, out: str) -> str:
    c = manifest["counts"]
    lines = [
        f"# Partition {manifest['date']} — {manifest.get('status', 'committed')}",
        "",
        f"- input rows: **{c['input_rows']}**, output rows: **{c['documents']}**, rejects: **{c['rejects']}**",
        f"- processors: `{', '.join(p['name'] + '=' + p['type'] for p in manifest.get('processors', []))}`; "
        f"run `{manifest['run_id']}`; "
        f"config `{manifest['config_hash']}`",
        f"- manifest: `{storage.join(out, '_manifests', 'date=' + manifest['date'] + '.json')}`",
        *(
            [f"- **Empty partition**: {manifest.get('note', 'the inputs held no rows')}"]
            if manifest.get("empty")
            else []
        ),
        "",
        "## Outputs (Delta tables)",
        "",
        "| dataset | table | version | files | rows |",
        "|---|---|---|---|---|",
    ]
    tables = manifest.get("tables") or {}
    for name, files in manifest["files"].items():
        version = tables.get(name, "—")
        where = storage.join(out, name)
        lines.append(f"| {name} | `{where}` | {version} | {len(files)} | {sum(f['rows'] for f in files)} |")
    if tables:
        lines += [
            "",
            "Read this run's output with `DeltaTable(table, version=V)` for the versions above "
            f"(`xlmflow history --out {out} --date {manifest['date']}` lists every run of the date).",
        ]
    if manifest.get("throughput"):
        lines += ["", "## Throughput", ""] + [f"- {k}: {v}" for k, v in manifest["throughput"].items()]
    if manifest["shards"]["failed"]:
        lines += [
            "",
            f"**{len(manifest['shards']['failed'])} shard(s) failed**: their rows are rejects "
            "with reason `shard_failed`; rerun with `--force`.",
        ]
    return "\n".join(lines)


def publish_report(manifest: dict, out: str) -> None:
    """Table + markdown artifacts on the Prefect run (best effort: reporting never fails a commit)."""
    try:
        # lazy: Prefect takes seconds to import; the CLI starts it after its checks
        from prefect.artifacts import create_markdown_artifact, create_table_artifact

        key = _key(f"corpus-{manifest['date']}")
        create_table_artifact(
            table=summary_rows(manifest),
            key=f"{key}-summary",
            description=f"counts for partition {manifest['date']}",
        )
        create_markdown_artifact(
            markdown=markdown_report(manifest, out),
            key=f"{key}-report",
            description=f"report for partition {manifest['date']}",
        )
    except Exception as exc:  # noqa: BLE001
        log.warning("could not publish the run report artifacts: %s", exc)


def print_summary(manifest: dict, stream=sys.stdout) -> None:  # noqa: ANN001
    c = manifest["counts"]
    print(
        f"partition {manifest['date']}: {manifest.get('status', 'committed')} — input rows {c['input_rows']}, "
        f"output rows {c['documents']}, rejects {c['rejects']}",
        file=stream,
    )
    if manifest.get("empty"):
        print(f"  NOTE: {manifest.get('note', 'the inputs held no rows')}", file=stream)
    if c.get("rejects_by_reason"):
        print("  rejects: " + ", ".join(f"{k}={v}" for k, v in c["rejects_by_reason"].items()), file=stream)
    if c.get("by_lang"):
        langs = sorted(c["by_lang"].items(), key=lambda kv: (-kv[1], kv[0]))
        shown = ", ".join(f"{k}={v}" for k, v in langs[:SUMMARY_LANGS])
        more = len(langs) - SUMMARY_LANGS
        if more > 0:  # a corpus of 100+ languages: the rest is in the manifest, and the count says so
            shown += f", and {more} more (counts.by_lang in the manifest)"
        print(f"  languages ({len(langs)}): {shown}", file=stream)
    if manifest.get("files"):
        rows = {name: sum(f["rows"] for f in files) for name, files in manifest["files"].items()}
        print("  rows per dataset: " + ", ".join(f"{k}={v}" for k, v in rows.items()), file=stream)
    for k, v in manifest.get("throughput", {}).items():
        print(f"  {k}: {v}", file=stream)
