"""Typed records the stages of a partition run hand each other (frozen: a stage never edits another's).

Records carry data and summaries only: no task runners, clients or Ray object references (those stay
beside them, in the driver), so Ray and Prefect pass and pickle them as they are. Each class states who
makes it, who reads it, and what holds of its fields.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class IngestResult:
    """What ingest hands to processing and commit.

    Made by tasks.steps.ingest_inputs from the split tasks and the id stage of dedup
    (tasks.ingest_pipeline.read_inputs); read by tasks.steps.process_shards (what to expect) and by
    the commit (tasks.collect: counts, rejects of the split tasks, manifest fields).

    - `listing`: the input files as listed before reading ({"path", "size", ...}); the manifest keeps it
      as the partition's input fingerprint;
    - `splits`: one summary per split task, in plan order; `input_rows == accepted + rejects` in each;
    - `pieces`: the plan's pieces (a split's `spans` name them by index), with their row offsets;
    - `losers`: one summary per id-stage reducer; `losers` rows of the accepted ones are duplicates;
    - `buckets`: the dedup bucket count; `root`: the plan's staging prefix, `staging`: the run's;
    - `seconds`: ingest's own stage timings ({"read", "dedup_ids"}).
    """

    staging: str
    root: str
    listing: list[dict]
    splits: list[dict]
    pieces: list[dict]
    losers: list[dict]
    buckets: int
    seconds: dict[str, float]

    @property
    def input_rows(self) -> int:
        return sum(s["input_rows"] for s in self.splits)

    @property
    def expected_documents(self) -> int:
        """Rows the content stage will see: accepted by the split tasks, less the id stage's duplicates."""
        return sum(s["accepted"] for s in self.splits) - sum(lo["losers"] for lo in self.losers)


@dataclass(frozen=True)
class ProcessResult:
    """What processing hands to commit.

    Made by tasks.steps.process_shards (content stage of dedup, then the processors on the actor pool);
    read by the commit (tasks.collect) and by the flow (the actors' model records, throughput).

    - `shards`: every staged shard ({"shard_id", "rows", "chars", "uri", ...}), in the order staged;
    - `done`: shard id -> the actor's stats of a finished shard (counts per dataset, rejects, languages);
    - `failed`: shard id -> error, for shards that failed after retries (their rows become rejects);
      every shard id of `shards` is in exactly one of `done` and `failed`;
    - `actors`: one info dict per actor of the pool (empty when every shard was done already);
    - `content`: the content reducers' summaries (their rejects: near and exact duplicates).
    """

    shards: list[dict]
    done: dict[str, dict]
    failed: dict[str, str]
    actors: list[dict]
    content: list[dict]

    @property
    def chars(self) -> int:
        return sum(s["chars"] for s in self.shards)

    @property
    def accepted(self) -> int:
        """Rows that reached the shards (accepted by the content stage)."""
        return sum(s["accepted"] for s in self.content)


@dataclass(frozen=True)
class WrittenPart:
    """What a writer task returns: one Parquet file of a dataset, written on the cluster.

    Made by tasks.write.write_part; read by tasks.collect (the files it commits, their schema, the
    writers' nodes) and tasks.report (the figures).

    - `file`: the file entry {"path", "rows", "bytes", "stats"} (statistics from the footer just written);
    - `schema`: the file's Arrow schema, serialized (every part of a dataset has the same one);
    - `figures`: the results of the aggregates the dataset declares, by their key (empty: none declared
      or no rows), e.g. {"labels": {...}} from LabelCounts.
    """

    dataset: str
    file: dict
    schema: bytes
    node_id: str | None
    seconds: float
    figures: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RunFacts:
    """What the flow knows of its run, for the manifest (all of it goes in as top-level keys).

    Made by flows.corpus as the run goes (the table versions at its start before ingest, the rest after
    processing); read by the commit, which adds the counts and files. `table_versions_at_start` is what
    every table commit of the run is made against (None: the table did not exist yet).
    """

    run_id: str
    code_version: str
    started_at: str
    flow_run_id: str | None
    table_versions_at_start: dict[str, int | None]
    input_fingerprint: list[dict] = field(default_factory=list)
    actors: list[dict] = field(default_factory=list)
    models: dict = field(default_factory=dict)
    throughput: dict = field(default_factory=dict)
    stages: dict[str, float] = field(default_factory=dict)

    def as_manifest(self) -> dict:
        return asdict(self)
