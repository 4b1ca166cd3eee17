"""One typed settings object for a run, passed down to every stage and actor.

`JobSettings` is what a deployment fixes (output, processors, knobs); `RunSettings` adds what one
partition run reads (inputs, date). Flows take a `JobSettings` as their one settings parameter (Prefect
renders it as a form), and the command line is generated from the same fields (xlmflow.cli_options).

Processors are a list of named instances, each `{"name", "type", "options"}`. This module knows no
processor type: settings are built through ray_cluster.registry (`make_settings`, `make_job`,
`run_settings`), which expands the shorthand `tasks="lid,ner"` with `ner_model=...` (one instance per
type, named like the type), validates each instance's options against its type's pydantic model with the
defaults filled in (so the config hash and the manifest hold every option a run used), and fills in
`resolved`: plain data (mode, versions) that the config hash and every stage read as they are.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from xlmflow.errors import ConfigError
from xlmflow.storage import canonical
from xlmflow.uris import REFUSED, has_userinfo

# defaults that commands outside JobSettings use too (restore and migrate take the partition lease;
# delta.checkpoint serves callers without settings): written once here
LEASE_TTL = 120.0
LOCK_TIMEOUT = 300.0
CHECKPOINT_INTERVAL = 10  # Delta's (Spark's) default

_INSTANCE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def check_date(value: object, what: str = "--date") -> str:
    """A partition date as its one canonical 'YYYY-MM-DD' string, or a ConfigError naming `what`.

    Every command and flow that takes a date passes it through here first: the date becomes part of
    object keys and paths (`date=D/`, `_manifests/date=D.json`), so only the plain ISO form passes
    (no '20261101' or week dates, which Python would also read, so one partition has one spelling).
    """
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, str) and _ISO_DATE.fullmatch(value):
        try:
            return dt.date.fromisoformat(value).isoformat()
        except ValueError:
            pass
    raise ConfigError(f"{what} {value!r} is not a date: write YYYY-MM-DD, e.g. 2026-11-01")


class ProcessorSpec(BaseModel):
    """One processor instance of a run: its name (in output rows and the manifest), type and options."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Instance name, e.g. entities (lowercase letters, digits, _).")
    type: str = Field(description="Processor type, e.g. lid, ner, embed, qe, classify, or a plug-in.")
    options: dict[str, Any] = Field(default_factory=dict, description="The type's options (see --help).")


class Resolved(BaseModel):
    """What the processor registry says of a run's instances, filled in when settings are built."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["docs", "pairs"]  # what the instances read: documents or src/mt pairs (one for all)
    versions: dict[str, str]  # instance -> its type's code version (the manifest, the config hash)
    hash_inputs: dict[str, str] = {}  # what else decides the types' output, e.g. a detector's version


class JobSettings(BaseModel):
    """What a deployment or a command fixes for every partition it runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    out: str = Field(description="Output root, a local directory or s3://bucket/prefix.")
    processors: tuple[ProcessorSpec, ...] = Field(
        default=(ProcessorSpec(name="lid", type="lid"),),
        description="Processor instances, run in order over every shard.",
    )
    ray_address: str | None = Field(default=None, description="Ray cluster address; None starts a local Ray.")
    actors: int | None = Field(
        default=None, gt=0, description="Actors in the pool (default: one per GPU, else one per 4 CPUs)."
    )
    force: bool = Field(default=False, description="Recompute a committed partition and replace it.")
    shared_out: bool = Field(
        default=False, description="A local --out is mounted at the same path on every Ray node."
    )

    # ingest
    max_text_chars: int = Field(default=1_000_000, gt=0, description="Longer texts are rejected as too_long.")
    max_record_bytes: int | None = Field(
        default=None,
        gt=0,
        description="Longer lines/records are too_long rejects, skipped unread (default 12 x max_text_chars "
        "+ 64 KiB, twice that in pairs mode: room for any JSON escaping of max_text_chars characters).",
    )
    max_file_bytes: int = Field(
        default=32 * 1024**3,
        gt=0,
        description="Decompressed bytes read from one file; the rest is one file_too_large reject.",
    )
    # splits and dedup (how the work is cut, not what it computes)
    split_bytes: int = Field(
        default=64 * 1024 * 1024,
        gt=0,
        description="Input bytes one ingest task reads (files are cut).",
        json_schema_extra={"cli_mb": True},
    )
    dedup_buckets: int | None = Field(
        default=None, gt=0, le=1024, description="Hash buckets of dedup (default: from the input size)."
    )
    # sharding / output sizes
    shard_chars: int = Field(default=2_000_000, gt=0, description="Character budget of one Arrow shard.")
    target_file_bytes: int = Field(
        default=128 * 1024 * 1024,
        gt=0,
        description="Target size of one Parquet file.",
        json_schema_extra={"cli_mb": True},
    )
    max_inflight_per_actor: int = Field(default=2, gt=0, description="Shards queued on one actor at a time.")
    shard_retries: int = Field(default=2, ge=0, description="Retries of a shard whose actor died.")
    actor_start_timeout: float = Field(
        default=600.0,
        gt=0,
        description="Seconds the shard actors may take to start and load their models before the run fails.",
    )
    max_error_fraction: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Share of a shard's rows a processor may fail on (as processing_error rejects) before "
        "the failure counts as systemic and the run fails.",
    )
    # the partition lease (one writer per partition)
    lease_ttl: float = Field(
        default=LEASE_TTL, gt=0, description="Seconds a partition lease lives without a heartbeat."
    )
    lock_timeout: float = Field(
        default=LOCK_TIMEOUT, ge=0, description="Seconds to wait for a partition another run holds."
    )
    checkpoint_interval: int = Field(
        default=CHECKPOINT_INTERVAL,
        gt=0,
        description="Write a Delta checkpoint of a table every N commits (a table's own "
        "delta.checkpointInterval wins).",
    )
    # run-level defaults of the model processors (each instance may override them)
    stride: int = Field(default=128, ge=0, description="Overlap in tokens between windows of long documents.")
    max_batch_tokens: int = Field(default=8192, gt=0, description="Padded tokens per model batch.")
    forward: Literal["auto", "packed", "padded"] = Field(
        default="auto",
        description="Model forward: packed (no padding; XLM-R/RoBERTa encoders and their token/sequence "
        "classifiers), padded (any model), auto (packed where it can run).",
    )
    cpu_precision: Literal["fp32", "int8"] = Field(
        default="fp32",
        description="Weights on CPU actors: fp32, or int8 Linear layers (dynamic quantization; faster, "
        "outputs close to fp32 but not equal).",
    )
    gpu_precision: Literal["bf16", "fp32"] = Field(
        default="bf16", description="Weights on GPU actors: bf16 (half the memory, tensor cores) or fp32."
    )
    cpu_workers: int | None = Field(
        default=None,
        ge=0,
        le=64,
        description="Worker processes per actor that tokenize and aggregate beside it (default: 2 per GPU "
        "actor, 0 on CPU actors, whose own cores are better spent on the forward pass).",
    )
    gpu_fraction: float = Field(
        default=1.0, gt=0, le=1.0, description="GPUs per actor (<1 packs several actors on a GPU)."
    )
    model_cache: str | None = Field(default=None, description="Local cache for models copied from s3://.")
    # not an input: worked out from the processor registry whenever settings are built (a form hides it)
    resolved: SkipJsonSchema[Resolved | None] = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        """`tasks="lid,ner"` plus `ner_model=X`, `qe_method=...`: one instance per type, named like it.
        Whether the types exist is the registry's to say (ray_cluster.registry checks the
        shorthand first, with the list of types); here an option goes to the type it starts with."""
        if not isinstance(data, dict) or ("tasks" not in data and all(k in cls.model_fields for k in data)):
            return data
        data = dict(data)
        tasks = data.pop("tasks", None)
        if tasks is None:
            tasks = () if data.get("processors") else ("lid",)
        names = [t.strip() for t in tasks.split(",") if t.strip()] if isinstance(tasks, str) else list(tasks)
        specs = {t: {"name": t, "type": t, "options": {}} for t in names}
        for key in [k for k in data if k not in cls.model_fields]:
            value = data.pop(key)
            t = max((t for t in names if key.startswith(t + "_")), key=len, default=None)
            if value is None:
                continue
            if t is None:
                raise ValueError(f"unknown setting {key!r} (or the option of a processor not in the run)")
            specs[t]["options"][key[len(t) + 1 :]] = value
        data["processors"] = [*specs.values(), *data.get("processors", ())]
        return data

    @field_validator("processors")
    @classmethod
    def _check_processors(cls, v: tuple[ProcessorSpec, ...]) -> tuple[ProcessorSpec, ...]:
        """What holds whatever the types: their types and options are resolved above the core
        (ray_cluster.registry)."""
        if not v:
            raise ValueError("no processor instances; give at least one (e.g. --tasks lid)")
        seen = set()
        for spec in v:
            if not _INSTANCE_NAME.match(spec.name):
                raise ValueError(f"instance name {spec.name!r}: use lowercase letters, digits and _")
            if spec.name in seen:
                raise ValueError(f"two processor instances are named {spec.name!r}")
            seen.add(spec.name)
            if isinstance(spec.options.get("model"), str):
                _refuse_userinfo(spec.options["model"], f"{spec.name}.model")
        return v

    @field_validator("out")
    @classmethod
    def _abs_out(cls, v: str) -> str:
        # one canonical spelling of local paths, so listed files compare equal to the ones we wrote
        return canonical(v)

    @field_validator("out")
    @classmethod
    def _no_credentials_out(cls, v: str) -> str:
        return _refuse_userinfo(v, "out")

    # ---- derived ----
    @property
    def mode(self) -> Literal["docs", "pairs"]:
        return self._resolved().mode

    def _resolved(self) -> Resolved:
        if self.resolved is None:
            raise ConfigError(
                "settings were built without resolving their processors; build them with "
                "xlmflow.ray_cluster.registry.make_settings/make_job/run_settings"
            )
        return self.resolved

    @property
    def record_byte_limit(self) -> int:
        """Bytes one line/record may take. The default has room for a text of max_text_chars characters
        however it is written (an escaped astral character, "\\ud83d\\ude00", is 12 bytes; one pairs
        row holds two texts) plus 64 KiB for the other fields: the text's length decides, not its
        escaping."""
        texts = 2 if self.mode == "pairs" else 1
        return self.max_record_bytes or texts * 12 * self.max_text_chars + (64 << 10)


class RunSettings(JobSettings):
    """Everything that decides what one partition run computes and where it goes."""

    inputs: tuple[str, ...] = Field(description="Input files, directories or globs (local or s3://).")
    date: dt.date = Field(
        default_factory=lambda: dt.datetime.now(dt.UTC).date(), description="Partition date."
    )

    @field_validator("date", mode="before")
    @classmethod
    def _iso_date(cls, v: object) -> str:
        try:
            return check_date(v, "date")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("inputs", mode="before")
    @classmethod
    def _inputs_tuple(cls, v: object) -> object:
        return (v,) if isinstance(v, str) else tuple(v)  # type: ignore[arg-type]

    @field_validator("inputs")
    @classmethod
    def _no_credentials(cls, v: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        for i, uri in enumerate(v, 1):
            if has_userinfo(uri):
                raise ValueError(f"input {i}: {REFUSED}")
        return v

    def config_hash(self) -> str:
        """Hash of what decides the output rows (not where or how fast), keying staging and the manifest."""
        keep = self.model_dump(mode="json", include=set(OUTPUT_FIELDS))
        keep["processor_versions"] = dict(self._resolved().versions)
        keep["dedup_rule"] = "id-then-content"  # the staged two-stage rule (tasks.dedup)
        keep.update(self._resolved().hash_inputs)  # e.g. the language detector: new labels only with --force
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


# the settings that decide the output rows (the config hash); the others say where and how fast
OUTPUT_FIELDS = ("inputs", "processors", "max_text_chars", "max_record_bytes", "max_file_bytes",
                 "shard_chars", "stride", "max_batch_tokens", "max_error_fraction", "forward",
                 "cpu_precision", "gpu_precision")  # fmt: skip


def _refuse_userinfo(uri: str, what: str) -> str:
    # a secret in a URI would reach botocore's error messages, logs and run records; refuse it here
    # too, so flows and deployments that build settings themselves refuse it like the CLI does
    if has_userinfo(uri):
        raise ValueError(f"{what}: {REFUSED}")
    return uri


def config_error(exc: Exception) -> ConfigError:
    """A validation error as one ConfigError line naming each field and what is wrong with it."""
    if isinstance(exc, ValidationError):
        msgs = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}".lstrip(": ")
            for e in exc.errors()
        )
        return ConfigError(f"invalid settings: {msgs}")
    return ConfigError(f"invalid settings: {exc}")
