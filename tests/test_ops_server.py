"""Operations against a real Prefect server and process worker: deployments, schedules, backfills, artifacts.

The unit tests at the top (date derivation, date ranges) need no server.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
import subprocess
import time

import pytest

from xlmflow.errors import ConfigError
from xlmflow.flows.backfill import STATUSES, date_range
from xlmflow.flows.daily import partition_date
from xlmflow.flows.params import lock_name, render_input

from .prefect_server import (
    ROOT,
    VENV_BIN,
    ensure_partition_run,
    flow_runs_named,
    prefect_cli,
    write_partition,
)


# ---- pure functions -------------------------------------------------------------------------------------------
def test_partition_date_is_scheduled_day_minus_lag():
    sched = dt.datetime(2026, 11, 2, 3, 0, tzinfo=dt.UTC)
    assert partition_date(sched) == dt.date(2026, 11, 1)
    assert partition_date(sched, lag_days=0) == dt.date(2026, 11, 2)
    assert partition_date(sched, lag_days=3) == dt.date(2026, 10, 30)
    # a run that starts late (or is retried) the next day keeps its scheduled time, hence its date
    assert partition_date(dt.datetime(2026, 1, 1, 0, 30, tzinfo=dt.UTC)) == dt.date(2025, 12, 31)


def test_partition_date_uses_the_schedule_time_zone():
    # 23:30 UTC on Nov 1 is already Nov 2 in Berlin (UTC+1): the Berlin 00:30 run processes Nov 1
    sched = dt.datetime(2026, 11, 1, 23, 30, tzinfo=dt.UTC)
    assert partition_date(sched, 1, "Europe/Berlin") == dt.date(2026, 11, 1)
    assert partition_date(sched, 1, "UTC") == dt.date(2026, 10, 31)
    assert partition_date(sched.replace(tzinfo=None), 1) == dt.date(2026, 10, 31)  # naive = UTC
    with pytest.raises(ConfigError, match="time zone"):
        partition_date(sched, 1, "Mars/Olympus")
    with pytest.raises(ConfigError, match="lag_days"):
        partition_date(sched, -1)


def test_date_range_and_template():
    assert date_range("2026-02-27", "2026-03-01") == ["2026-02-27", "2026-02-28", "2026-03-01"]
    with pytest.raises(ConfigError, match="before"):
        date_range("2026-03-02", "2026-03-01")
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        date_range("2026-3-1x", "2026-03-01")
    assert render_input("s3://raw/corpus/date={date}/", "2026-11-01") == "s3://raw/corpus/date=2026-11-01/"
    with pytest.raises(ConfigError, match="date"):
        render_input("s3://raw/corpus/", "2026-11-01")
    # lock names: one per (output, date), and legal limit names (no '/')
    assert lock_name("s3://a/b", "2026-11-01") != lock_name("s3://a/c", "2026-11-01")
    assert "/" not in lock_name("s3://a/b", "2026-11-01")


def test_operations_doc_lists_the_flows_real_parameters():
    import importlib
    import inspect

    doc = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(\w+/\w+)` \| `([\w/]+)\.py:(\w+)` \| (.*) \|$", doc, re.M)
    assert {r[0] for r in rows} == {"corpus/partition", "daily/daily", "backfill/backfill"}, rows
    for _, module, name, params in rows:
        fn = getattr(importlib.import_module(module.replace("/", ".")), name).fn
        real = [p.name for p in inspect.signature(fn).parameters.values() if p.kind is not p.VAR_KEYWORD]
        assert re.findall(r"`(\w+)`", params) == real, (module, name)


# ---- against the server ------------------------------------------------------------------------------------------


def _statuses(text: str) -> dict[str, str]:
    """date -> status from the printed backfill table."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and len(parts[0]) == 10 and parts[0][4] == "-" and parts[1] in STATUSES:
            out[parts[0]] = parts[1]
    return out


@pytest.mark.server
@pytest.mark.slow
def test_triggered_run_completes_with_artifacts(prefect_stack, tmp_path_factory):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    fr = ensure_partition_run(prefect_stack, tmp_path_factory)
    assert fr.state.is_completed(), (fr.state, prefect_stack.log_tail("worker"))
    assert fr.name == "corpus-2026-11-01"
    assert "date:2026-11-01" in fr.tags and "processor:lid" in fr.tags
    with prefect_stack.settings(), get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[fr.id]))
        )
    by_type = {a.type: a for a in arts if a.key}
    assert {"table", "markdown", "progress"} <= set(by_type), [(a.key, a.type) for a in arts]
    assert by_type["progress"].data == 100.0
    # the artifact's own page shows its description, not its data: the description carries the number
    progress = [a for a in arts if a.type == "progress"]
    assert len(progress) == 2, [(a.key, a.description) for a in progress]  # input read, documents processed
    for a in progress:
        assert re.search(r": 100% \((\d+) of \1 \w+s\)$", a.description), (a.key, a.description)
    assert "2026-11-01" in by_type["markdown"].data
    # the report links the Delta table versions the run committed (version 1: 0 is the table's creation)
    assert "| documents | `" in by_type["markdown"].data and "/documents` | 1 |" in by_type["markdown"].data
    assert "delta_version" in str(by_type["table"].data)
    # the table's numbers are the partition's: the run read the 5 documents we wrote
    assert "5" in str(by_type["table"].data)


@pytest.mark.server
@pytest.mark.slow
def test_interval_schedule_runs_execute_for_the_scheduled_day(prefect_stack, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
    from prefect.client.schemas.sorting import FlowRunSort

    from xlmflow.flows.deploy import deploy_all

    today = dt.datetime.now(dt.UTC).date()
    for d in (today - dt.timedelta(days=1), today):  # the run may be scheduled just after midnight
        write_partition(tmp_path / "raw", d.isoformat(), 3)
    out = tmp_path / "out"
    with prefect_stack.settings():
        names = deploy_all(
            input_template=str(tmp_path / "raw" / "date={date}"), settings={"out": str(out)}, interval=15
        )
        with get_client(sync_client=True) as client:
            dep = client.read_deployment_by_name(names["daily"])
            try:
                deadline, done = time.monotonic() + 240, None
                while time.monotonic() < deadline and done is None:
                    runs = client.read_flow_runs(
                        flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[dep.id])),
                        sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                    )
                    done = next((r for r in runs if r.state and r.state.is_final()), None)
                    time.sleep(2)
            finally:
                client.delete_deployment(dep.id)  # stop the 15 s schedule and drop its future runs
    assert done is not None, f"no scheduled run finished in 240 s\n{prefect_stack.log_tail('worker')}"
    assert done.state.is_completed(), (done.state, prefect_stack.log_tail("worker"))
    assert done.auto_scheduled  # created by the server's scheduler, not by us
    day = partition_date(done.expected_start_time, 1).isoformat()
    assert done.name == f"daily-{day}"
    assert (out / "_manifests" / f"date={day}.json").exists()


def _xlmflow(stack, *args: str) -> subprocess.Popen:
    """`xlmflow ARGS` in a subprocess talking to the stack's server (flows never run in the pytest process,
    so no Prefect log/event worker here ever points at this server)."""
    return subprocess.Popen(
        [str(VENV_BIN / "xlmflow"), *args],
        env=stack.env,
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _backfill(stack, template: str, out: str, start: str, end: str, n: int = 2) -> subprocess.Popen:
    return _xlmflow(
        stack,
        "backfill",
        "--input",
        template,
        "--out",
        out,
        "--start",
        start,
        "--end",
        end,
        "--max-concurrent",
        str(n),
        "--deployment",
        "corpus/partition",
        "--poll-interval",
        "1",
    )


@pytest.mark.server
@pytest.mark.slow
def test_backfill_twice_at_once_runs_each_date_once_then_skips(prefect_stack, tmp_path):
    from xlmflow.flows.deploy import deploy_all

    dates = ["2026-10-01", "2026-10-02"]
    for i, d in enumerate(dates):
        write_partition(tmp_path / "raw", d, 3, offset=3 * i)
    template, out = str(tmp_path / "raw" / "date={date}"), str(tmp_path / "out")
    with prefect_stack.settings():
        deploy_all(input_template=template, settings={"out": out}, cron=None)
    # the same backfill started twice at once
    t0 = time.monotonic()
    procs = [_backfill(prefect_stack, template, out, dates[0], dates[-1]) for _ in range(2)]
    try:
        outs = [p.communicate(timeout=400)[0] for p in procs]
    finally:
        for p in procs:
            p.kill() if p.poll() is None else None
    secs = time.monotonic() - t0
    assert [p.returncode for p in procs] == [0, 0], outs
    a, b = (_statuses(o) for o in outs)
    # each date was computed by exactly one of the two; the other waited for it, then skipped it
    for d in dates:
        assert sorted([a[d], b[d]]) == ["committed", "skipped"], (d, a, b)
    runs = flow_runs_named(prefect_stack, [f"corpus-{d}" for d in dates])
    assert sorted(r.name for r in runs) == [f"corpus-{d}" for d in dates], [
        (r.name, r.state_name) for r in runs
    ]
    assert all(r.state.is_completed() for r in runs)
    for d in dates:
        assert (tmp_path / "out" / "_manifests" / f"date={d}.json").exists()

    # the same backfill again: every date is committed, nothing runs
    p = _backfill(prefect_stack, template, out, dates[0], dates[-1])
    text = p.communicate(timeout=200)[0]
    assert p.returncode == 0, text
    assert _statuses(text) == dict.fromkeys(dates, "skipped"), text
    assert "documents=3" in text  # counts come from each partition's manifest
    assert len(flow_runs_named(prefect_stack, [f"corpus-{d}" for d in dates])) == 2

    # a file arrives late for one committed date: reported as inputs_changed, not recomputed, not failed
    late = {"id": "late-0", "text": "Toute personne a droit à l'éducation."}
    (tmp_path / "raw" / f"date={dates[1]}" / "late.jsonl").write_text(
        json.dumps(late) + "\n", encoding="utf-8"
    )
    p = _backfill(prefect_stack, template, out, dates[0], dates[-1])
    text = p.communicate(timeout=200)[0]
    assert p.returncode == 0, text
    assert _statuses(text) == {dates[0]: "skipped", dates[1]: "inputs_changed"}, text
    assert "added " in text and "late.jsonl" in text
    assert len(flow_runs_named(prefect_stack, [f"corpus-{d}" for d in dates])) == 2
    print(f"two concurrent backfills of 2 dates: {secs:.0f} s")
    for o in outs:
        print("\n".join(line for line in o.splitlines() if line[:4] in ("date", "2026")))


@pytest.mark.server
@pytest.mark.slow
def test_backfill_reports_failed_and_missing_dates_and_exits_nonzero(prefect_stack, tmp_path):
    ok, missing, broken = "2026-09-01", "2026-09-02", "2026-09-03"
    write_partition(tmp_path / "raw", ok, 2)
    bad = tmp_path / "raw" / f"date={broken}"
    bad.mkdir(parents=True)
    (bad / "notes.bin").write_bytes(b"\x00not a corpus file")  # input exists but nothing readable in it
    template, out = str(tmp_path / "raw" / "date={date}"), str(tmp_path / "out")
    with prefect_stack.settings():
        from xlmflow.flows.deploy import deploy_all

        deploy_all(input_template=template, settings={"out": out}, cron=None)
    p = _backfill(prefect_stack, template, out, ok, broken, n=2)
    text = p.communicate(timeout=400)[0]
    assert p.returncode == 1, text
    # the failed date did not stop the others; the date without input is reported, not failed
    assert _statuses(text) == {ok: "committed", missing: "no_input", broken: "failed"}, text
    assert (tmp_path / "out" / "_manifests" / f"date={ok}.json").exists()
    runs = {r.name: r for r in flow_runs_named(prefect_stack, [f"corpus-{d}" for d in (ok, missing, broken)])}
    assert runs[f"corpus-{ok}"].state.is_completed() and runs[f"corpus-{missing}"].state.is_completed()
    assert runs[f"corpus-{broken}"].state.is_failed()
    # --max-concurrent 2: never three partition runs at once (the runs' own start/end times on the server;
    # whether two overlap depends on how fast the broken date fails)
    edges = sorted([(r.start_time, 1) for r in runs.values()] + [(r.end_time, -1) for r in runs.values()])
    assert max(itertools.accumulate(step for _, step in edges)) <= 2


@pytest.mark.server
@pytest.mark.slow
def test_backfill_without_deployment_runs_dates_as_subflows(prefect_stack, tmp_path):
    write_partition(tmp_path / "raw", "2026-08-01", 2)  # 2026-08-02 has no input
    template, out = str(tmp_path / "raw" / "date={date}"), str(tmp_path / "out")
    p = _xlmflow(
        prefect_stack,
        "backfill",
        "--input",
        template,
        "--out",
        out,
        "--start",
        "2026-08-01",
        "--end",
        "2026-08-02",
    )
    text = p.communicate(timeout=300)[0]
    assert p.returncode == 0, text
    assert _statuses(text) == {"2026-08-01": "committed", "2026-08-02": "no_input"}, text
    (sub,) = flow_runs_named(prefect_stack, ["corpus-2026-08-01"])
    assert sub.parent_task_run_id is not None and sub.deployment_id is None  # a subflow of the backfill run


@pytest.mark.server
@pytest.mark.slow
def test_late_daily_run_processes_its_scheduled_day_not_today(prefect_stack, tmp_path):
    from prefect.deployments import run_deployment

    # scheduled 23:30 UTC on Oct 15 = Oct 16 in Berlin; with a 1-day lag the partition is Oct 15 (the run
    # starts weeks late: today's date must play no part). Only that day has input, and missing input fails.
    write_partition(tmp_path / "raw", "2026-10-15", 2)
    template, out = str(tmp_path / "raw" / "date={date}"), tmp_path / "out"
    # deployed with `xlmflow deploy`, as an operator would
    p = _xlmflow(
        prefect_stack, "deploy", "--input", template, "--out", str(out), "--timezone", "Europe/Berlin"
    )
    text = p.communicate(timeout=120)[0]
    assert p.returncode == 0 and "deployment daily: daily/daily" in text, text
    with prefect_stack.settings():
        fr = run_deployment(
            "daily/daily",
            scheduled_time=dt.datetime(2026, 10, 15, 23, 30, tzinfo=dt.UTC),
            timeout=300,
            poll_interval=1,
        )
    assert fr.state.is_completed(), (fr.state, prefect_stack.log_tail("worker"))
    assert fr.name == "daily-2026-10-15"
    assert {"daily", "date:2026-10-15", "processor:lid"} <= set(fr.tags), fr.tags
    assert (out / "_manifests" / "date=2026-10-15.json").exists()
    (sub,) = flow_runs_named(prefect_stack, ["corpus-2026-10-15"])  # the partition ran as a named subflow
    assert sub.parent_task_run_id is not None and sub.state.is_completed()


@pytest.mark.server
@pytest.mark.slow
def test_prefect_yaml_deploys_the_three_deployments(prefect_stack):
    from prefect.client.orchestration import get_client

    # `prefect deploy` fills {{ $PWD }} (the pull step's directory) from the environment, as a shell would
    res = prefect_cli(prefect_stack, "deploy", "--all", env={"PWD": str(ROOT)})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    with prefect_stack.settings(), get_client(sync_client=True) as client:
        deps = {
            n: client.read_deployment_by_name(n)
            for n in ("corpus/partition", "daily/daily", "backfill/backfill")
        }
    daily = deps["daily/daily"]
    (sched,) = daily.schedules
    assert sched.schedule.cron == "0 3 * * *" and sched.schedule.timezone == "Europe/Berlin"
    assert sched.active
    assert "{date}" in daily.parameters["input_template"] and daily.parameters["lag_days"] == 1
    assert deps["backfill/backfill"].parameters["deployment"] == "corpus/partition"
    for d in deps.values():
        assert d.work_pool_name == "xlmflow"
        assert d.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]


def test_infra_manifests_match_the_project():
    """The KubeRay cluster and the image stay in step with the code (Ray version, GPUs, /dev/shm, packages)."""
    import tomllib

    import ray
    import yaml

    rc = yaml.safe_load((ROOT / "infra" / "kuberay" / "raycluster.yaml").read_text())
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster"
    assert rc["spec"]["rayVersion"] == ray.__version__  # nodes and drivers must run the same Ray
    groups = {g["groupName"]: g["template"]["spec"] for g in rc["spec"]["workerGroupSpecs"]}
    for spec in [rc["spec"]["headGroupSpec"]["template"]["spec"], *groups.values()]:
        (c,) = spec["containers"]
        shm = {m["name"] for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm"}
        assert any(v["name"] in shm and v["emptyDir"].get("medium") == "Memory" for v in spec["volumes"])
    gpu = groups["gpu"]["containers"][0]["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == gpu["requests"]["nvidia.com/gpu"] == "1"
    # the image copies every package the project installs
    docker = (ROOT / "infra" / "Dockerfile").read_text()
    folders = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    )
    assert folders == {"xlmflow", "flows", "tasks", "ray_cluster"}
    for folder in folders:
        assert f"COPY {folder} ./{folder}" in docker, folder


@pytest.mark.server
@pytest.mark.slow
def test_backfill_deployment_runs_on_the_worker(prefect_stack, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.deployments import run_deployment

    from xlmflow.flows.deploy import deploy_all

    write_partition(tmp_path / "raw", "2026-07-01", 2)
    template, out = str(tmp_path / "raw" / "date={date}"), tmp_path / "out"
    with prefect_stack.settings():
        names = deploy_all(input_template=template, settings={"out": str(out)}, cron=None)
        # what `prefect deployment run backfill/backfill -p start=... -p end=...` does
        fr = run_deployment(
            names["backfill"],
            parameters={"start": "2026-07-01", "end": "2026-07-01", "poll_interval": 1},
            timeout=300,
            poll_interval=1,
        )
        with get_client(sync_client=True) as client:
            arts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[fr.id]))
            )
    assert fr.state.is_completed(), (fr.state, prefect_stack.log_tail("worker"))
    assert fr.name == "backfill-2026-07-01-to-2026-07-01"
    assert {"backfill", "date:2026-07-01", "processor:lid"} <= set(fr.tags), fr.tags
    (part,) = flow_runs_named(prefect_stack, ["corpus-2026-07-01"])
    assert part.state.is_completed() and part.deployment_id is not None  # its own run of corpus/partition
    (table,) = [a for a in arts if a.key == "backfill-status"]
    assert "committed" in str(table.data)
    assert (out / "_manifests" / "date=2026-07-01.json").exists()
