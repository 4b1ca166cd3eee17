"""`xlmflow deploy`: the work pool and the three deployments (partition, daily, backfill) on a Prefect server.

The same deployments are declared in `prefect.yaml` (for `prefect deploy --all`); this command builds
them from flags, so one can point them at other inputs, outputs and models without editing YAML.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path

from xlmflow.errors import ConfigError, FatalError
from xlmflow.settings import JobSettings

ROOT = Path(__file__).resolve().parent.parent  # the project root, where the flows' entrypoints live
PARTITION, DAILY, BACKFILL = "partition", "daily", "backfill"


def ensure_work_pool(name: str) -> bool:
    """Create a `process` work pool named `name` unless it exists; True if it was created. Read first:
    a create that conflicts logs an ERROR in the server's database (see flows.params.ensure_limit)."""
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


def _schedule(cron: str | None, interval: float | None, timezone: str):  # noqa: ANN202 - prefect type
    from prefect.schedules import Cron, Interval

    if interval:
        return Interval(interval, timezone=timezone)
    return Cron(cron, timezone=timezone) if cron else None


def deploy_all(
    *,
    input_template: str,
    settings: JobSettings | dict,
    pool: str = "xlmflow",
    cron: str | None = "0 3 * * *",
    interval: float | None = None,
    timezone: str = "UTC",
    lag_days: int = 1,
    max_concurrent: int = 2,
    source: str | Path = ROOT,
    env: dict[str, str] | None = None,
) -> dict[str, str]:
    """Create/update the deployments; returns {short name: 'flow/deployment'}. Needs PREFECT_API_URL."""
    from prefect import Flow

    from flows.params import render_input
    from ray_cluster.processors.registry import make_job

    render_input(input_template, "2000-01-01")  # fail early on a template without {date}
    job = settings if isinstance(settings, JobSettings) else make_job(**settings)
    common = {"settings": job.model_dump(mode="json", exclude={"resolved"})}  # not an input
    job_vars = {"env": env} if env else None
    ensure_work_pool(pool)

    def deploy(entrypoint: str, name: str, parameters: dict, schedule=None, description: str = "") -> str:  # noqa: ANN001
        fl = Flow.from_source(source=str(source), entrypoint=entrypoint)
        buf = io.StringIO()  # Prefect prints a table per deployment; keep it unless something went wrong
        with contextlib.redirect_stdout(buf):
            ids = fl.deploy(
                name=name,
                work_pool_name=pool,
                parameters=parameters,
                schedules=[schedule] if schedule else [],
                description=description,
                job_variables=job_vars,
                build=False,
                push=False,
                print_next_steps=False,
                ignore_warnings=True,
            )
        if not ids or "Encountered errors" in buf.getvalue():
            raise FatalError(f"deploying {entrypoint} as {name!r} failed:\n{buf.getvalue()}")
        return f"{fl.name}/{name}"

    names = {
        PARTITION: deploy(
            "flows/corpus.py:corpus_flow",
            PARTITION,
            {**common},
            description="One date partition; started by the backfill, one flow run per date.",
        ),
        DAILY: deploy(
            "flows/daily.py:daily_flow",
            DAILY,
            {**common, "input_template": input_template, "lag_days": lag_days, "timezone": timezone},
            _schedule(cron, interval, timezone),
            description="The scheduled run: the partition of the scheduled day minus lag_days.",
        ),
    }
    names[BACKFILL] = deploy(
        "flows/backfill.py:backfill_flow",
        BACKFILL,
        {
            **common,
            "input_template": input_template,
            "deployment": names[PARTITION],
            "max_concurrent": max_concurrent,
        },
        description="Give start and end (YYYY-MM-DD): one partition run per date.",
    )
    return names


def add_deploy_arguments(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    """Arguments of `xlmflow deploy`: its own, then every run setting (xlmflow.cli_options)."""
    from xlmflow.cli_options import add_job_options

    parser.add_argument(
        "--input",
        required=True,
        metavar="TEMPLATE",
        help="input template with {date}, e.g. s3://raw/corpus/date={date}/",
    )
    parser.add_argument("--out", required=True, help="output root (local dir or s3://bucket/prefix)")
    parser.add_argument(
        "--pool",
        default="xlmflow",
        metavar="NAME",
        help="process work pool (created if missing; default xlmflow)",
    )
    parser.add_argument(
        "--cron", default="0 3 * * *", metavar="CRON", help="daily schedule (default '0 3 * * *')"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="schedule every N seconds instead of --cron",
    )
    parser.add_argument(
        "--timezone", default="UTC", metavar="TZ", help="IANA time zone of the schedule and of the dates"
    )
    parser.add_argument(
        "--lag-days", type=int, default=1, metavar="N", help="process the scheduled day minus N (default 1)"
    )
    parser.add_argument(
        "--max-concurrent", type=int, default=2, metavar="N", help="default of the backfill deployment"
    )
    parser.add_argument(
        "--source",
        default=str(ROOT),
        metavar="DIR",
        help="project directory the worker runs the flows from (default: this checkout)",
    )
    add_job_options(parser, argv)


def deploy_main(ns: argparse.Namespace) -> int:
    """`xlmflow deploy`: print the deployment names and how to start a worker."""
    from prefect.settings import PREFECT_API_URL

    from ray_cluster.processors.registry import make_job
    from xlmflow.cli_options import job_kwargs

    if not PREFECT_API_URL.value():
        raise ConfigError(
            "PREFECT_API_URL is not set; start a server (prefect server start) and export "
            "PREFECT_API_URL=http://HOST:4200/api"
        )
    if ns.lag_days < 0:
        raise ConfigError(f"--lag-days must be >= 0, got {ns.lag_days}")
    names = deploy_all(
        input_template=ns.input,
        settings=make_job(out=ns.out, **job_kwargs(ns)),
        pool=ns.pool,
        cron=ns.cron,
        interval=ns.interval,
        timezone=ns.timezone,
        lag_days=ns.lag_days,
        max_concurrent=ns.max_concurrent,
        source=ns.source,
    )
    for short, full in names.items():
        print(f"deployment {short}: {full}")
    print(f"start a worker: prefect worker start --pool {ns.pool}")
    return 0
