"""`xlmflow backfill|deploy`: the commands over the Prefect flows (flows/backfill.py, flows/deploy.py)."""

from __future__ import annotations

import argparse
import shlex

from xlmflow import reaper
from xlmflow.cli_options import add_job_options, job_kwargs
from xlmflow.errors import ConfigError
from xlmflow.flows.backfill import backfill_flow, date_range, format_table
from xlmflow.flows.deploy import CRON, POOL, ROOT, YAML_SOURCE, deploy_all, deployments, prefect_yaml
from xlmflow.flows.params import LAG_DAYS, MAX_CONCURRENT, POLL_INTERVAL, TIMEZONE, render_input
from xlmflow.ray_cluster.registry import make_job


def _add_input_and_out(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input",
        required=True,
        metavar="TEMPLATE",
        help="input template with {date}, e.g. s3://raw/corpus/date={date}/",
    )
    parser.add_argument("--out", required=True, help="output root (local dir or s3://bucket/prefix)")


def add_backfill_arguments(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    """Arguments of `xlmflow backfill`: its own, then every run setting (xlmflow.cli_options)."""
    _add_input_and_out(parser)
    parser.add_argument("--start", required=True, metavar="DATE", help="first date, YYYY-MM-DD")
    parser.add_argument("--end", required=True, metavar="DATE", help="last date, YYYY-MM-DD (included)")
    parser.add_argument(
        "--max-concurrent",
        type=int,
        default=MAX_CONCURRENT,
        metavar="N",
        help=f"partition runs at a time (default {MAX_CONCURRENT})",
    )
    parser.add_argument(
        "--deployment",
        default=None,
        metavar="FLOW/DEPLOYMENT",
        help="run each date as a flow run of this deployment (e.g. corpus/partition) on the "
        "work pool's workers; default: run dates in this process",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=POLL_INTERVAL,
        metavar="SECONDS",
        help=f"seconds between run status polls (default {POLL_INTERVAL:g})",
    )
    add_job_options(parser, argv)


def backfill_main(ns: argparse.Namespace) -> int:
    """`xlmflow backfill`: 0 when every date is committed, skipped or has no input; 1 if any failed."""
    reaper.start()  # a killed backfill takes its temporary Prefect server and local Ray with it

    # bad dates, settings or a template without {date} are a ConfigError for the CLI, before any run
    render_input(ns.input, date_range(ns.start, ns.end)[0])
    job = make_job(out=ns.out, **job_kwargs(ns))
    state = backfill_flow(
        input_template=ns.input,
        settings=job,
        start=ns.start,
        end=ns.end,
        max_concurrent=ns.max_concurrent,
        deployment=ns.deployment,
        poll_interval=ns.poll_interval,
        return_state=True,
    )
    if state.is_completed():
        print(format_table(state.result()))
        return 0
    print(f"backfill failed: {state.message}")  # the message carries the table of every date
    return 1


def add_deploy_arguments(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    """Arguments of `xlmflow deploy`: its own, then every run setting (xlmflow.cli_options)."""
    _add_input_and_out(parser)
    parser.add_argument(
        "--pool", default=POOL, metavar="NAME", help=f"process work pool (created if missing; default {POOL})"
    )
    parser.add_argument("--cron", default=CRON, metavar="CRON", help=f"daily schedule (default '{CRON}')")
    parser.add_argument(
        "--interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="schedule every N seconds instead of --cron",
    )
    parser.add_argument(
        "--timezone",
        default=TIMEZONE,
        metavar="TZ",
        help=f"IANA time zone of the schedule and of the dates (default {TIMEZONE})",
    )
    parser.add_argument(
        "--lag-days",
        type=int,
        default=LAG_DAYS,
        metavar="N",
        help=f"process the scheduled day minus N (default {LAG_DAYS})",
    )
    parser.add_argument(
        "--max-concurrent",
        type=int,
        default=MAX_CONCURRENT,
        metavar="N",
        help=f"default of the backfill deployment (default {MAX_CONCURRENT})",
    )
    parser.add_argument(
        "--source",
        default=None,
        metavar="DIR",
        help="project directory the worker runs the flows from (default: this checkout; with "
        "--print-yaml, the directory `prefect deploy` is run in)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an environment variable of the flow runs (repeatable)",
    )
    parser.add_argument(
        "--print-yaml",
        action="store_true",
        help="print the deployments as a prefect.yaml (for `prefect deploy --all`) instead of creating them",
    )
    add_job_options(parser, argv)
    parser.set_defaults(deploy_argv=list(argv or []))  # named in the head of the printed prefect.yaml


def deploy_main(ns: argparse.Namespace) -> int:
    """`xlmflow deploy`: print the deployment names and how to start a worker (or, with --print-yaml,
    the deployments as a prefect.yaml)."""
    # lazy: Prefect takes seconds to import; the CLI starts it after its checks
    from prefect.settings import PREFECT_API_URL

    if not ns.print_yaml and not PREFECT_API_URL.value():
        raise ConfigError(
            "PREFECT_API_URL is not set; start a server (prefect server start) and export "
            "PREFECT_API_URL=http://HOST:4200/api"
        )
    if ns.lag_days < 0:
        raise ConfigError(f"--lag-days must be >= 0, got {ns.lag_days}")
    env = dict(_env_pair(e) for e in ns.env) or None
    job = make_job(out=ns.out, **job_kwargs(ns))
    schedule = {
        "cron": ns.cron,
        "interval": ns.interval,
        "timezone": ns.timezone,
        "lag_days": ns.lag_days,
        "max_concurrent": ns.max_concurrent,
    }
    if ns.print_yaml:
        specs = deployments(ns.input, job, **schedule)
        command = shlex.join(["xlmflow", *ns.deploy_argv])
        print(prefect_yaml(specs, command, pool=ns.pool, source=ns.source or YAML_SOURCE, env=env), end="")
        return 0
    names = deploy_all(
        input_template=ns.input, settings=job, pool=ns.pool, source=ns.source or ROOT, env=env, **schedule
    )
    for short, full in names.items():
        print(f"deployment {short}: {full}")
    print(f"start a worker: prefect worker start --pool {ns.pool}")
    return 0


def _env_pair(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise ConfigError(f"--env {value!r}: write KEY=VALUE, e.g. --env HF_HUB_OFFLINE=1")
    return key, val
