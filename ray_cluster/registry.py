"""The processor registry: which types exist, what a run's processors write, and settings resolved
against them.

Types register when their class is defined (`Processor.__init_subclass__` calls `register`): the
built-in modules of xlmflow.ray_cluster.processors are imported by `registry()`, plug-ins come from the entry-point
group `xlmflow.processors`. A name is taken once: a second class under a taken name (a plug-in named
like a built-in) is refused with a ConfigError, never silently swapped in.

The settings (xlmflow.settings) know no processor type. `resolve_job` checks a run's processor
instances against the registry (types, options with their defaults, added columns, one mode) and fills
in `Resolved`: the run's mode and the versions and detector versions that go into the config hash.
Every command and flow builds its settings through `make_job`/`make_settings`/`run_settings` here.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pyarrow as pa
from pydantic import ValidationError

from xlmflow import schemas
from xlmflow.errors import ConfigError
from xlmflow.ray_cluster.outputs import Dataset, as_dataset
from xlmflow.settings import JobSettings, ProcessorSpec, Resolved, RunSettings, check_date, config_error

ENTRY_POINT_GROUP = "xlmflow.processors"
BUILTINS = "xlmflow.ray_cluster.processors"  # the package of the built-in processor types
_OWN_MODULES = {"base"}  # the machinery of that package, not a processor type
_REGISTRY: dict[str, Any] = {}  # name -> Processor subclass
_LOADED = False


def register(cls: Any) -> None:
    """Take `cls.name` for `cls`; a name another class holds is refused (the same class defined again,
    as when its module is reloaded, replaces itself)."""
    old = _REGISTRY.get(cls.name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ConfigError(
            f"two processor types are named {cls.name!r}: {old.__module__}.{old.__qualname__} and "
            f"{cls.__module__}.{cls.__qualname__}; a processor type (a plug-in too) needs a name of its own"
        )
    _REGISTRY[cls.name] = cls


def registry() -> dict[str, Any]:
    """Processor types by name: this package's modules, then the `xlmflow.processors` entry points."""
    global _LOADED
    if not _LOADED:
        # imported by name: the types' modules import the machinery here, never the other way round
        pkg = importlib.import_module(BUILTINS)
        for m in pkgutil.iter_modules(pkg.__path__):
            if m.name not in _OWN_MODULES:
                importlib.import_module(f"{BUILTINS}.{m.name}")
        builtins = {n for n, c in _REGISTRY.items() if c.__module__.startswith(f"{BUILTINS}.")}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            load_plugin(ep, builtins)
        _LOADED = True
    return dict(_REGISTRY)


def load_plugin(ep: EntryPoint, builtins: set[str]) -> None:
    """Load one plug-in's class; ConfigError naming the plug-in when it fails, is no processor type,
    or takes a built-in's name."""
    if ep.name in builtins:
        raise ConfigError(
            f"processor plug-in {ep.name!r} ({ep.value}) is named like a built-in processor type; give it "
            "another name in its package's entry points, or uninstall it"
        )
    try:
        cls = ep.load()
    except Exception as exc:  # noqa: BLE001 - say which plug-in and how to get rid of it
        raise ConfigError(
            f"processor plug-in {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}; "
            "fix or uninstall its package"
        ) from exc
    if _REGISTRY.get(ep.name) is not cls:  # a Processor subclass registers itself under its name
        raise ConfigError(
            f"entry point {ep.name!r} of group {ENTRY_POINT_GROUP} must name a Processor subclass whose "
            f"name is {ep.name!r} (got {ep.value})"
        )
    if ep.dist is not None:
        cls.package = f"{ep.dist.name}=={ep.dist.version}"


# ---- what a run's processors make ----


def build_processors(settings: RunSettings) -> list:
    """The run's processor instances, in order."""
    reg = registry()
    return [reg[spec.type](spec, settings) for spec in settings.processors]


def main_name(settings: JobSettings) -> str:
    """The dataset of the main record: the documents, or the pairs."""
    return "pairs" if settings.mode == "pairs" else "documents"


def main_schema(settings: RunSettings) -> pa.Schema:
    """The main record of a run: the staged columns (documents or pairs) plus what its processors add."""
    base = schemas.PAIRS if settings.mode == "pairs" else schemas.DOCUMENTS
    reg = registry()
    for spec in settings.processors:
        cls = reg[spec.type]
        at = base.get_field_index(cls.columns_after) + 1 if cls.columns_after in base.names else None
        for f in cls.columns:
            if f.name in base.names:
                continue
            base = base.append(f) if at is None else base.insert(at, f)
            at = None if at is None else at + 1
    return base


def run_declarations(settings: RunSettings) -> dict[str, Dataset]:
    """Every dataset a run writes, in commit order: the main record, the processors' datasets, rejects."""
    out = {main_name(settings): Dataset(main_schema(settings))}
    reg = registry()
    for spec in settings.processors:
        for name, declared in reg[spec.type].datasets.items():
            out.setdefault(name, as_dataset(declared))
    out["rejects"] = Dataset(schemas.REJECTS)
    return out


def run_datasets(settings: RunSettings) -> dict[str, pa.Schema | None]:
    """Every dataset a run writes, in commit order, with its schema (None: known once a model loads)."""
    return {name: d.schema for name, d in run_declarations(settings).items()}


def known_datasets() -> list[str]:
    """Datasets of every registered processor type, plus the core ones (for cleanup)."""
    names = {"documents", "pairs", "rejects"}
    for cls in registry().values():
        names.update(cls.datasets)
    return sorted(names)


# ---- settings resolved against the registry ----


def make_settings(**kw: Any) -> RunSettings:
    """Run settings from their input (the `tasks` shorthand included), resolved; a ConfigError that
    says what to change otherwise."""
    return _build(RunSettings, kw)


def make_job(**kw: Any) -> JobSettings:
    """Job settings (no inputs or date), as make_settings."""
    return _build(JobSettings, kw)


def run_settings(
    job: JobSettings | dict, inputs: list[str] | tuple[str, ...], date: str | None
) -> RunSettings:
    """A job's settings for one partition (resolved again: a deployment may predate a plug-in's update)."""
    data = job.model_dump() if isinstance(job, JobSettings) else dict(job)
    when = {} if date is None else {"date": check_date(date, "date")}
    return make_settings(**data, inputs=inputs, **when)


def resolve_job(job: JobSettings | dict) -> JobSettings:
    """A job's settings resolved against this process's registry (what a flow does with its parameter)."""
    return make_job(**(job.model_dump() if isinstance(job, JobSettings) else dict(job)))


def _build(model: type[JobSettings], kw: dict) -> Any:
    reg = registry()
    data = {k: v for k, v in kw.items() if k != "resolved"}  # always worked out anew
    try:
        _check_shorthand(model, data, reg)
        settings = model(**data)
    except (ValidationError, ValueError) as exc:
        raise config_error(exc) from None
    try:
        specs, resolved = _resolve(settings.processors, reg)
    except ValueError as exc:
        raise ConfigError(f"invalid settings: processors: {exc}") from None
    return settings.model_copy(update={"processors": specs, "resolved": resolved})


def _check_shorthand(model: type[JobSettings], data: dict, reg: dict) -> None:
    """The `tasks` shorthand's types and options against the registry, before the settings expand it."""
    if "tasks" not in data and all(k in model.model_fields for k in data):
        return
    tasks = data.get("tasks")
    if tasks is None:
        tasks = () if data.get("processors") else ("lid",)
    names = [t.strip() for t in tasks.split(",") if t.strip()] if isinstance(tasks, str) else list(tasks)
    unknown = [t for t in names if t not in reg]
    if unknown:
        raise ValueError(f"unknown processor(s) {unknown}; available: {', '.join(sorted(reg))}")
    for key in [k for k in data if k not in model.model_fields and k != "tasks"]:
        t = next((t for t in reg if key.startswith(t + "_")), None)
        if t is None:
            raise ValueError(f"unknown setting {key!r}")
        if data[key] is not None and t not in names:
            raise ValueError(f"{key} is given but processor {t} is not in the run (tasks: {','.join(names)})")


def _resolve(specs: tuple[ProcessorSpec, ...], reg: dict) -> tuple[tuple[ProcessorSpec, ...], Resolved]:
    """The instances with their options validated and defaults filled in, and what the types say of them."""
    out, columns, hash_inputs = [], {}, {}
    for spec in specs:
        proc = reg.get(spec.type)
        if proc is None:
            raise ValueError(f"unknown processor type {spec.type!r}; available: {', '.join(sorted(reg))}")
        try:
            opts = proc.Options.model_validate(spec.options)
        except ValidationError as exc:
            msgs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"processor {spec.name} ({spec.type}): {msgs}") from None
        for col in proc.columns.names:
            if col in columns:
                raise ValueError(f"instances {columns[col]} and {spec.name} both add column {col!r}")
            columns[col] = spec.name
        hash_inputs.update(proc.hash_inputs())
        out.append(ProcessorSpec(name=spec.name, type=spec.type, options=opts.model_dump(mode="json")))
    modes = {reg[s.type].mode for s in out}
    if len(modes) > 1:
        pairs = [s.name for s in out if reg[s.type].mode == "pairs"]
        raise ValueError(
            f"{', '.join(pairs)} work on src/mt pairs, the others on documents; run them separately"
        )
    versions = {s.name: reg[s.type].code_version() for s in out}
    return tuple(out), Resolved(mode=modes.pop(), versions=versions, hash_inputs=hash_inputs)
