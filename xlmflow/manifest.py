"""Where a partition's manifest lives, and reading and writing it (the commit point of a partition)."""

from __future__ import annotations

from xlmflow import storage
from xlmflow.errors import ConfigError
from xlmflow.settings import check_date

MANIFEST_VERSION = 2  # 2: the datasets are Delta tables and the manifest pins their versions


def manifest_uri(out: str, date: str) -> str:
    return storage.join(out, "_manifests", f"date={check_date(date, 'date')}.json")


def run_manifest_uri(out: str, date: str, run_id: str) -> str:
    """Every committed run's manifest is also kept here: what `xlmflow restore` brings back."""
    if not run_id or "/" in run_id or "\\" in run_id or run_id in (".", ".."):
        raise ConfigError(f"{run_id!r} is not a run id; `xlmflow history --out OUT --date D` lists them")
    return storage.join(out, "_manifests", "_runs", f"date={check_date(date, 'date')}", f"{run_id}.json")


def _json_names(uri: str, prefix: str = "") -> list[str]:
    """Names (without `.json`) of the JSON files directly under `uri` that start with `prefix`."""
    fs, path = storage.fresh(uri)
    try:
        bases = [p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
    except FileNotFoundError:
        return []
    return sorted(
        b[len(prefix) : -len(".json")] for b in bases if b.startswith(prefix) and b.endswith(".json")
    )


def manifest_dates(out: str) -> list[str]:
    """The dates that have a current manifest."""
    return _json_names(storage.join(out, "_manifests"), "date=")


def archived_runs(out: str, date: str) -> list[str]:
    """The run ids whose manifest of `date` is archived (every run that committed the date)."""
    return _json_names(storage.join(out, "_manifests", "_runs", f"date={check_date(date, 'date')}"))


def read_manifest(out: str, date: str) -> dict | None:
    uri = manifest_uri(out, date)
    return storage.read_json(uri) if storage.exists(uri) else None


def write_manifest(out: str, manifest: dict) -> None:
    """The archive copy first, then the current one: the commit point."""
    date = manifest["date"]
    storage.write_json(run_manifest_uri(out, date, manifest["run_id"]), manifest)
    storage.write_json(manifest_uri(out, date), manifest)


RAN_KEYS = (
    "device",
    "precision",
    "forward",
    "gemm",
)  # how each actor ran a model (ray_cluster.engine.Engine.describe)


def run_models(infos: list[dict]) -> dict:
    """Per instance, the model record of the run's actors: one actor's record, where the actors ran it
    differently (a CPU and a GPU node) each of `device`, `precision`, `forward`, `gemm` lists every value seen."""
    models: dict = {}
    for info in infos:
        for name, rec in (info.get("models") or {}).items():
            cur = models.setdefault(name, dict(rec))
            for key in RAN_KEYS:
                seen = cur.get(key)
                if key in rec and seen != rec[key] and rec[key] not in str(seen).split("+"):
                    cur[key] = f"{seen}+{rec[key]}"
    return models
