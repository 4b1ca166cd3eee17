"""The three deployments (partition, daily, backfill), declared once.

`deployments()` is the one declaration: `deploy_all` creates them on a Prefect server (`xlmflow deploy`),
and `prefect_yaml` writes them as a prefect.yaml for `prefect deploy --all` (`xlmflow deploy
--print-yaml`). The project's prefect.yaml is that output; its first lines name the command that wrote
it, and a test fails when the file and the command's output differ.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from xlmflow.errors import FatalError
from xlmflow.flows.params import LAG_DAYS, MAX_CONCURRENT, TIMEZONE, render_input
from xlmflow.ray_cluster.registry import make_job
from xlmflow.settings import JobSettings

ROOT = Path(__file__).resolve().parent.parent  # the project root, where the flows' entrypoints live
PARTITION, DAILY, BACKFILL = "partition", "daily", "backfill"
POOL = "xlmflow"  # the process work pool the deployments run on
QUEUE = "default"  # the pool's default queue
CRON = "0 3 * * *"  # the daily run's schedule
TAGS = ("xlmflow",)
# prefect.yaml's pull step: the worker runs the flows from the directory `prefect deploy` was run in
YAML_SOURCE = "{{ $PWD }}"


@dataclass(frozen=True)
class Deployment:
    """One deployment as the server gets it: `flow`/`name` is its full name, `entrypoint` the flow
    function (`file:function`, relative to the project root), `parameters` its fixed parameters, the
    settings among them as JSON; `schedule` is None or {"cron" or "interval": ..., "timezone": ...}."""

    flow: str
    name: str
    entrypoint: str
    description: str
    parameters: dict[str, Any]
    schedule: dict[str, Any] | None = None

    @property
    def full_name(self) -> str:
        return f"{self.flow}/{self.name}"


def deployments(
    input_template: str,
    job: JobSettings,
    *,
    cron: str | None = CRON,
    interval: float | None = None,
    timezone: str = TIMEZONE,
    lag_days: int = LAG_DAYS,
    max_concurrent: int = MAX_CONCURRENT,
) -> list[Deployment]:
    """The partition, daily and backfill deployments of `job` over inputs named by `input_template`."""
    render_input(input_template, "2000-01-01")  # fail early on a template without {date}
    common = {"settings": job.model_dump(mode="json", exclude={"resolved"})}  # resolved: not an input
    schedule = (
        {"interval": interval, "timezone": timezone}
        if interval
        else {"cron": cron, "timezone": timezone}
        if cron
        else None
    )
    partition = Deployment(
        "corpus",
        PARTITION,
        "flows/corpus.py:corpus_flow",
        "One date partition (inputs and date given per run); the backfill starts one run of it per date.",
        {**common},
    )
    daily = Deployment(
        "daily",
        DAILY,
        "flows/daily.py:daily_flow",
        "The scheduled run: the partition of the scheduled day minus lag_days, in the schedule's time "
        "zone; the date comes from the run's scheduled start time, never the wall clock.",
        {**common, "input_template": input_template, "lag_days": lag_days, "timezone": timezone},
        schedule,
    )
    backfill = Deployment(
        "backfill",
        BACKFILL,
        "flows/backfill.py:backfill_flow",
        "Give start and end (YYYY-MM-DD): one run of the partition deployment per date, at most "
        "max_concurrent at a time.",
        {
            **common,
            "input_template": input_template,
            "deployment": partition.full_name,
            "max_concurrent": max_concurrent,
        },
    )
    return [partition, daily, backfill]


def ensure_work_pool(name: str) -> bool:
    """Create a `process` work pool named `name` unless it exists; True if it was created. Read first:
    a create that conflicts logs an ERROR in the server's database (see flows.params.ensure_limit)."""
    # lazy: Prefect takes seconds to import; the CLI starts it after its checks
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            pass
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            return True
        except ObjectAlreadyExists:
            return False


def deploy_all(
    *,
    input_template: str,
    settings: JobSettings | dict,
    pool: str = POOL,
    source: str | Path = ROOT,
    env: dict[str, str] | None = None,
    **schedule: Any,
) -> dict[str, str]:
    """Create/update the deployments; returns {short name: 'flow/deployment'}. Needs PREFECT_API_URL.
    `schedule`: cron, interval, timezone, lag_days, max_concurrent, as `deployments()` takes them."""
    job = settings if isinstance(settings, JobSettings) else make_job(**settings)
    specs = deployments(input_template, job, **schedule)
    ensure_work_pool(pool)
    return {d.name: _deploy(d, pool, str(source), env) for d in specs}


def _deploy(d: Deployment, pool: str, source: str, env: dict[str, str] | None) -> str:
    # lazy: Prefect takes seconds to import; the CLI starts it after its checks
    from prefect import Flow

    schedule = _prefect_schedule(d.schedule)
    fl = Flow.from_source(source=source, entrypoint=d.entrypoint)
    buf = io.StringIO()  # Prefect prints a table per deployment; keep it unless something went wrong
    with contextlib.redirect_stdout(buf):
        ids = fl.deploy(
            name=d.name,
            work_pool_name=pool,
            work_queue_name=QUEUE,
            parameters=d.parameters,
            schedules=[schedule] if schedule else [],
            description=d.description,
            tags=list(TAGS),
            job_variables={"env": env} if env else None,
            build=False,
            push=False,
            print_next_steps=False,
            ignore_warnings=True,
        )
    if not ids or "Encountered errors" in buf.getvalue():
        raise FatalError(f"deploying {d.entrypoint} as {d.name!r} failed:\n{buf.getvalue()}")
    return f"{fl.name}/{d.name}"


def _prefect_schedule(s: dict[str, Any] | None):  # noqa: ANN202 - a Prefect schedule
    # lazy: Prefect takes seconds to import; the CLI starts it after its checks
    from prefect.schedules import Cron, Interval

    if s is None:
        return None
    if "interval" in s:
        return Interval(s["interval"], timezone=s["timezone"])
    return Cron(s["cron"], timezone=s["timezone"])


_YAML_HEAD = """\
# Deployments of xlmflow for `prefect deploy --all`, written by flows/deploy.py: do not edit, regenerate.
# This file is the output of (a test fails when it is not):
#   {command} > prefect.yaml
# Run from the project root, with PREFECT_API_URL set: prefect --no-prompt deploy --all
# Work pool: `prefect work-pool create {pool} --type process`; worker: `prefect worker start --pool {pool}`.
# A backfill: prefect deployment run backfill/backfill -p start=2026-10-01 -p end=2026-10-31
# The pull step runs the flows from the directory `prefect deploy` was run in; in the container image
# (infra/Dockerfile) that is /opt/xlmflow. `settings` is the flows' one settings parameter
# (xlmflow.settings.JobSettings; the UI shows it as a form); `xlmflow run --help` lists every option.
"""


class _Dumper(yaml.SafeDumper):
    """Anchors named after what they hold, the pool or the settings, for a reader of the file."""

    def generate_anchor(self, node: Any) -> str:
        return "settings" if "out" in {k.value for k, _ in node.value} else "pool"


def prefect_yaml(
    specs: list[Deployment],
    command: str,
    *,
    pool: str = POOL,
    source: str = YAML_SOURCE,
    env: dict[str, str] | None = None,
) -> str:
    """`specs` as a prefect.yaml; `command` is the command line that wrote it (named in its head)."""
    # lazy: Prefect takes seconds to import; the CLI starts it after its checks
    import prefect

    pool_def = {"name": pool, "work_queue_name": QUEUE, "job_variables": {"env": env} if env else {}}
    settings = specs[0].parameters["settings"]
    doc = {
        "name": "xlmflow",
        "prefect-version": prefect.__version__,
        "build": None,
        "push": None,
        "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": source}}],
        "definitions": {"work_pool": pool_def, "settings": settings},
        "deployments": [
            {
                "name": d.name,
                "entrypoint": d.entrypoint,
                "description": d.description,
                "tags": list(TAGS),
                "work_pool": pool_def,
                **({"schedules": [{**d.schedule, "active": True}]} if d.schedule else {}),
                "parameters": {**d.parameters, "settings": settings},
            }
            for d in specs
        ],
    }
    body = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=110, allow_unicode=True)
    return _YAML_HEAD.format(command=command, pool=pool) + body
