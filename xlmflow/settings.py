"""One typed settings object for a run, passed down to every stage and actor."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from xlmflow.errors import ConfigError

KNOWN_TASKS = ("lid", "ner", "embed", "qe")
# tasks that work on single documents vs. on source/translation pairs
DOC_TASKS = ("lid", "ner", "embed")
PAIR_TASKS = ("qe",)


class RunSettings(BaseModel):
    """Everything that decides what one partition run computes and where it goes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    inputs: tuple[str, ...] = Field(description="Input files, directories or globs (local or s3://).")
    out: str = Field(description="Output root, a local directory or s3://bucket/prefix.")
    date: dt.date = Field(
        default_factory=lambda: dt.datetime.now(dt.UTC).date(), description="Partition date."
    )
    tasks: tuple[str, ...] = Field(default=("lid",), description="Processors to run, in order.")
    ray_address: str | None = Field(default=None, description="Ray cluster address; None starts a local Ray.")
    actors: int | None = Field(
        default=None, gt=0, description="Actors in the pool (default: one per GPU, else per 2 CPUs)."
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
        description="Longer lines/records are too_long rejects, skipped unread (default 4 x max_text_chars).",
    )
    max_file_bytes: int = Field(
        default=32 * 1024**3,
        gt=0,
        description="Decompressed bytes read from one file; the rest is one file_too_large reject.",
    )
    # splits and dedup (how the work is cut, not what it computes)
    split_bytes: int = Field(
        default=64 * 1024 * 1024, gt=0, description="Input bytes one ingest task reads (files are cut)."
    )
    dedup_buckets: int | None = Field(
        default=None, gt=0, le=1024, description="Hash buckets of dedup (default: from the input size)."
    )
    # sharding / output sizes
    shard_chars: int = Field(default=2_000_000, gt=0, description="Character budget of one Arrow shard.")
    target_file_bytes: int = Field(
        default=128 * 1024 * 1024, gt=0, description="Target size of one Parquet file."
    )
    max_inflight_per_actor: int = Field(default=2, gt=0, description="Shards queued on one actor at a time.")
    shard_retries: int = Field(default=2, ge=0, description="Retries of a shard whose actor died.")
    # the partition lease (one writer per partition)
    lease_ttl: float = Field(
        default=120.0, gt=0, description="Seconds a partition lease lives without a heartbeat."
    )
    lock_timeout: float = Field(
        default=300.0, ge=0, description="Seconds to wait for a partition another run holds."
    )

    # models (issue 3/4)
    ner_model: str | None = Field(default=None, description="HF id, local dir, s3:// prefix, or 'tiny'.")
    ner_aggregation: Literal["simple", "first", "average", "max"] = "simple"
    embed_model: str | None = None
    embed_pooling: Literal["mean", "lawdr"] = "mean"
    qe_model: str | None = None
    qe_method: Literal["regression", "cosine"] = "regression"
    qe_order: Literal["src-mt", "mt-src"] = "src-mt"
    qe_target_lang: str | None = Field(
        default=None, description="Expected language of translations (e.g. deu_Latn)."
    )
    stride: int = Field(default=128, ge=0, description="Overlap in tokens between windows of long documents.")
    max_batch_tokens: int = Field(default=8192, gt=0, description="Token budget of one model batch.")
    gpu_fraction: float = Field(
        default=1.0, gt=0, le=1.0, description="GPUs per actor (<1 packs actors on a GPU)."
    )
    model_cache: str | None = Field(default=None, description="Local cache for models copied from s3://.")

    @field_validator("tasks", mode="before")
    @classmethod
    def _split_tasks(cls, v: object) -> object:
        if isinstance(v, str):
            v = [t.strip() for t in v.split(",") if t.strip()]
        bad = [t for t in v if t not in KNOWN_TASKS]  # type: ignore[union-attr]
        if bad:
            raise ValueError(f"unknown task(s) {bad}; available tasks: {', '.join(KNOWN_TASKS)}")
        return tuple(v)  # type: ignore[arg-type]

    @field_validator("out")
    @classmethod
    def _abs_out(cls, v: str) -> str:
        # one canonical spelling of local paths, so listed files compare equal to the ones we wrote
        import os

        return v.rstrip("/") if "://" in v else os.path.abspath(v)

    @field_validator("inputs", mode="before")
    @classmethod
    def _inputs_tuple(cls, v: object) -> object:
        return (v,) if isinstance(v, str) else tuple(v)  # type: ignore[arg-type]

    @field_validator("inputs", "out", "ner_model", "embed_model", "qe_model")
    @classmethod
    def _no_credentials(cls, v: object, info: ValidationInfo) -> object:
        # a secret in a URI would reach botocore's error messages, logs and run records; refuse it here
        # too, so flows and deployments that build settings themselves refuse it like the CLI does
        from xlmflow.uris import REFUSED, has_userinfo

        values = v if isinstance(v, tuple) else (v,)
        for i, uri in enumerate(values, 1):
            if has_userinfo(uri):  # type: ignore[arg-type]
                raise ValueError(f"input {i}: {REFUSED}" if info.field_name == "inputs" else REFUSED)
        return v

    @property
    def record_byte_limit(self) -> int:
        """Bytes one line/record may take: room for JSON escapes and multi-byte UTF-8 of max_text_chars."""
        return self.max_record_bytes or 4 * self.max_text_chars

    @property
    def mode(self) -> Literal["docs", "pairs"]:
        has_pairs = any(t in PAIR_TASKS for t in self.tasks)
        if has_pairs and any(t in ("ner", "embed") for t in self.tasks):
            raise ConfigError("task qe works on src/mt pairs; run it separately from ner/embed")
        return "pairs" if has_pairs else "docs"

    def config_hash(self) -> str:
        """Hash of what decides the output rows (not where or how fast), keying staging and the manifest."""
        keep = self.model_dump(
            mode="json",
            exclude={
                "out",
                "date",
                "ray_address",
                "actors",
                "force",
                "max_inflight_per_actor",
                "shard_retries",
                "target_file_bytes",
                "model_cache",
                "gpu_fraction",
                "lease_ttl",
                "lock_timeout",
                "split_bytes",
                "dedup_buckets",
                "shared_out",
            },
        )
        keep["dedup_rule"] = "id-then-content"  # the staged two-stage rule (tasks.dedup)
        if "lid" in self.tasks or self.mode == "pairs":
            from ray_cluster.langid import detector_version

            keep["lid_detector"] = detector_version()  # new labels only with --force
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def make_settings(**kw: object) -> RunSettings:
    """Build settings, turning validation errors into a ConfigError that says what to change."""
    from pydantic import ValidationError

    try:
        return RunSettings(**kw)  # type: ignore[arg-type]
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid settings: {msgs}") from exc
