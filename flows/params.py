"""What the flows share: their settings parameter, their own parameters' defaults, the input template, the lock.

Every flow takes the run settings as one typed parameter, `settings` (xlmflow.settings.JobSettings;
the Prefect UI renders it as a form). A deployment created by an older xlmflow passes the parameters
the flows had then (`tasks`, `ner_model`, ...): its runs fail with `legacy_parameters_error`, which
says how to redeploy, instead of a binding error.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from xlmflow.errors import ConfigError
from xlmflow.ray_cluster.registry import resolve_job
from xlmflow.settings import JobSettings

# defaults of the flows' own parameters: the flows' signatures, `xlmflow deploy`/`backfill` and the
# generated prefect.yaml all read them from here
LAG_DAYS = 1  # the daily run processes its scheduled day minus this
TIMEZONE = "UTC"  # of the daily schedule and of its dates
MAX_CONCURRENT = 2  # partition runs of a backfill at a time
POLL_INTERVAL = 5.0  # seconds between a backfill's status polls of a partition run

REDEPLOY = (
    "redeploy with this version: `xlmflow deploy --input TEMPLATE --out OUT [options]` (or `prefect deploy "
    "--all` with the project's prefect.yaml), then start the runs again"
)


def job_settings(settings: Any, legacy: dict[str, Any], flow: str) -> JobSettings:
    """The flow's JobSettings; a ConfigError saying how to redeploy when old-style parameters came in."""
    if legacy:
        raise ConfigError(
            f"flow {flow!r} got parameters it no longer has ({', '.join(sorted(legacy))}): the deployment was "
            f"created by an older xlmflow, whose flows took one parameter per setting; flows now take one "
            f"`settings` parameter. {REDEPLOY}"
        )
    if settings is None:
        raise ConfigError(f"flow {flow!r} needs its `settings` parameter (at least settings.out); {REDEPLOY}")
    return resolve_job(settings)  # resolved here: Prefect validates the parameter without the registry


def render_input(template: str, date: str) -> str:
    """Fill `{date}` in an input template such as 's3://raw/corpus/date={date}/'."""
    if "{date}" not in template:
        raise ConfigError(f"input template {template!r} must contain '{{date}}'")
    return template.replace("{date}", date)


def lock_name(out: str, date: str) -> str:
    """Concurrency-limit name of one partition (limit names may not contain '/', so the output is hashed)."""
    return f"xlmflow-partition-{hashlib.sha1(out.encode()).hexdigest()[:12]}-{date}"


@contextmanager
def partition_lock(out: str, date: str) -> Iterator[None]:
    """Hold the partition's global concurrency slot (limit 1) while it is computed; leases are renewed."""
    # lazy: Prefect takes seconds to import; the CLI starts it after its checks
    from prefect.concurrency.sync import concurrency

    name = lock_name(out, date)
    ensure_limit(name)
    with concurrency(name, occupy=1, strict=True):
        yield


def ensure_limit(name: str) -> None:
    """Create the concurrency limit `name` (limit 1) unless it exists. Read first: a create that
    conflicts makes the server's database log an ERROR (a unique-key violation on PostgreSQL), which
    trips log-based alerting, and a limit exists on every rerun and every second run of a date. Two
    runs that both find it missing still race; the loser's conflict is taken as success."""
    # lazy: Prefect takes seconds to import; the CLI starts it after its checks
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        except ObjectAlreadyExists:  # another run of this partition created it in between
            pass


def tag_run(tags: list[str], job: Any) -> None:
    """Add `tags` and `processor:NAME` of every processor instance of `job` to the current flow run, so the
    UI can filter runs (partitions, and the daily and backfill runs above them) by date and processor."""
    try:
        # lazy: Prefect takes seconds to import; the CLI starts it after its checks
        from prefect import get_client
        from prefect.runtime import flow_run

        wanted = {*tags, *(f"processor:{p.name}" for p in job.processors)}
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(flow_run.id)
            client.update_flow_run(flow_run.id, tags=sorted({*run.tags, *wanted}))
    except Exception:  # noqa: BLE001 - tags are cosmetic
        pass
