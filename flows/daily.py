"""The scheduled daily run: one partition per day, its date taken from the run's *scheduled* time.

The date never comes from the wall clock: a run that starts late, or is retried the next morning,
still processes the day its schedule slot stands for.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal
from zoneinfo import ZoneInfo

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from xlmflow.errors import ConfigError
from xlmflow.flows.corpus import corpus_flow
from xlmflow.flows.params import LAG_DAYS, TIMEZONE, job_settings, partition_lock, render_input, tag_run
from xlmflow.settings import JobSettings, check_date


def partition_date(scheduled: dt.datetime, lag_days: int = LAG_DAYS, timezone: str = TIMEZONE) -> dt.date:
    """The partition a run scheduled at `scheduled` processes: its calendar day in `timezone`, minus the lag.

    A naive `scheduled` is taken as UTC (Prefect's times are always aware; this guards hand-made ones).
    """
    if lag_days < 0:
        raise ConfigError(f"lag_days must be >= 0, got {lag_days}")
    if scheduled.tzinfo is None:
        scheduled = scheduled.replace(tzinfo=dt.UTC)
    try:
        tz = ZoneInfo(timezone)
    except Exception as exc:  # ZoneInfoNotFoundError or a malformed key
        raise ConfigError(
            f"unknown time zone {timezone!r}; use an IANA name such as 'Europe/Berlin'"
        ) from exc
    return scheduled.astimezone(tz).date() - dt.timedelta(days=lag_days)


def _scheduled_date(lag_days: int, timezone: str) -> str:
    return partition_date(flow_run.scheduled_start_time, lag_days, timezone).isoformat()


def _daily_run_name() -> str:
    p = flow_run.parameters
    date = p.get("date") or _scheduled_date(p.get("lag_days", LAG_DAYS), p.get("timezone", TIMEZONE))
    return f"daily-{date}"


@flow(name="daily", flow_run_name=_daily_run_name)
def daily_flow(
    input_template: str | None = None,
    settings: JobSettings | None = None,
    lag_days: int = LAG_DAYS,
    timezone: str = TIMEZONE,
    date: str | None = None,
    missing_input: Literal["fail", "skip"] = "fail",
    **legacy: Any,
) -> dict:
    """Process the partition of the scheduled day (or `date`, for a manual re-run) as a `corpus` subflow."""
    job = job_settings(settings, legacy, "daily")
    if not input_template:
        raise ConfigError("flow 'daily' needs `input_template` (with {date})")
    day = _scheduled_date(lag_days, timezone) if date is None else check_date(date, "date")
    tag_run(["daily", f"date:{day}"], job)
    get_run_logger().info("daily run for partition %s (lag %d day(s), tz %s)", day, lag_days, timezone)
    # the same lock as a backfill of this date: the two never compute one partition at once
    with partition_lock(job.out, day):
        res = corpus_flow(
            inputs=[render_input(input_template, day)], settings=job, date=day, missing_input=missing_input
        )
    if res["status"] == "inputs_changed":  # reported, not a failure: a --force run recomputes it
        get_run_logger().warning("partition %s: inputs changed since its commit: %s", day, res["changes"])
    return res


if __name__ == "__main__":
    import sys

    daily_flow(input_template=sys.argv[1], settings={"out": sys.argv[2]})
