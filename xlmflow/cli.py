"""`xlmflow` command line: run a partition, make tiny models and pairs, deploy, backfill."""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import re
import sys
import traceback
from typing import NoReturn

from xlmflow import __version__, interrupt, local_api, reaper, storage
from xlmflow.cli_options import add_job_options, job_kwargs
from xlmflow.errors import ConfigError, InputsChangedError
from xlmflow.failures import explain, hide_console_tracebacks, silence_console
from xlmflow.lease import backend_for
from xlmflow.lease_cli import add_lease_parser
from xlmflow.manifest import read_manifest
from xlmflow.ray_cluster.cluster import cluster_address, connect
from xlmflow.ray_cluster.model_check import check_processor
from xlmflow.ray_cluster.models import make_tiny
from xlmflow.ray_cluster.pool import prestart, shutdown_pools
from xlmflow.ray_cluster.registry import make_job, registry, run_settings
from xlmflow.settings import check_date
from xlmflow.tables_cli import add_tables_parsers
from xlmflow.tasks.inputs import check_output_apart, expand_inputs
from xlmflow.tasks.pairs import make_pairs
from xlmflow.tasks.report import print_summary
from xlmflow.uris import REFUSED, has_userinfo, redact

_DEBUG_HELP = "debug logs, and the traceback of a failure"


def _precheck_run(a: argparse.Namespace):  # noqa: ANN202
    """Fail fast, before Ray and Prefect start: settings, credentials in URIs, inputs that match nothing,
    models that do not resolve or do not fit their processor (ray_cluster.model_check). Returns the
    job settings and the partition's run settings (what the flow will build from them)."""
    # before any library sees them: botocore would print the secret, Prefect would store it
    kw = job_kwargs(a)
    named = [(f"input {i}", u) for i, u in enumerate(a.inputs, 1)] + [("--out", a.out)]
    named += [(f"--{k.replace('_', '-')}", v) for k, v in kw.items() if k.endswith("_model")]
    named += [(f"--{p['name']}.model", p["options"].get("model")) for p in kw.get("processors", [])]
    bad = [what for what, uri in named if isinstance(uri, str) and has_userinfo(uri)]
    if bad:
        raise ConfigError(f"{', '.join(bad)}: {REFUSED}")
    job = make_job(out=a.out, **kw)
    settings = run_settings(job, list(a.inputs), a.date)  # what the flow will build: fail here, not there
    storage.check_output_root(a.out)
    expand_inputs(a.inputs)
    check_output_apart(a.inputs, a.out)
    remote = cluster_address(job.ray_address)  # actors may see other directories than we do
    declared = {p["name"] for p in kw.get("processors", [])}  # by --proc: their options are --NAME.OPTION
    for spec in job.processors:
        flag = f"--{spec.name}.model" if spec.name in declared else f"--{spec.type}-model"
        check_processor(spec, flag, local_actors=not remote)
    return job, settings


def cmd_run(a: argparse.Namespace) -> int:
    reaper.start()  # the temporary Prefect server and a local Ray must not outlive this process
    interrupt.install()  # SIGINT and SIGTERM end the run within seconds, releasing its lease
    job, settings = _precheck_run(a)
    # Prefect's temporary server, Ray and the actors' model loads start side by side, before the flow
    api = local_api.start_early()
    # on a shared cluster, actors started before this run holds the partition's lease could take the
    # resources the lease holder's actors wait for: there, the pool starts inside the flow, as it did
    if _work_expected(settings):
        if cluster_address(settings.ray_address):
            connect(settings.ray_address)  # a cluster that refuses this driver says so now, in seconds
        else:
            prestart(settings)
    # lazy: Prefect's flow machinery (3 s), imported here while the others start
    from xlmflow.flows.corpus import corpus_flow

    interrupt.take_prefect_sigterm()

    _configure_logging(a.verbose)
    with local_api.serving(local_api.settle(api)):
        res = corpus_flow(inputs=list(a.inputs), settings=job, date=a.date)
    _stop_ray()
    if res["status"] == "skipped":
        print(
            f"partition {res['date']} is already committed in {res['out']} (run {res['manifest']['run_id']}); "
            "nothing to do. Use --force to recompute it."
        )
        return 0
    if res["status"] == "inputs_changed":
        raise InputsChangedError(
            f"partition {res['date']} in {res['out']} was committed (run {res['manifest']['run_id']}) from "
            f"inputs that have changed since: {'; '.join(res['changes'])}. The partition was left as it "
            "is; rerun with --force to recompute it from the current inputs."
        )
    print_summary({**res["manifest"], "status": res["status"]})
    print(f"outputs under {res['out']}; manifest {res['out']}/_manifests/date={res['date']}.json")
    return 0


def _stop_ray() -> None:
    """Stop the actors and disconnect (a local Ray stops) as soon as the flow is done. Ray's exit
    handler would do the same, after a half-second pause for the workers' last output, which a finished
    flow no longer has; a run that fails still stops through it."""
    if "ray" not in sys.modules:
        return
    import ray  # lazy: costs 1 s at CLI start, and a run that never started Ray does not need it

    if ray.is_initialized():
        shutdown_pools()
        ray.shutdown()


def _work_expected(settings) -> bool:  # noqa: ANN001
    """False when the run will most likely not process anything: the partition is committed (and not
    forced), or another run holds its lease (this one waits, and then usually finds it committed)."""
    day = settings.date.isoformat()
    try:
        if read_manifest(settings.out, day) and not settings.force:
            return False
        seen = backend_for(settings.out, day).read()
        return seen is None or seen.expired
    except Exception:  # noqa: BLE001 - the flow reads them again and reports what is wrong
        return True


def cmd_models_tiny(a: argparse.Namespace) -> int:
    path = make_tiny(a.task, a.out, seed=a.seed)
    print(
        f"wrote a tiny random-weight XLM-R checkpoint for processor {a.task} (smoke tests only: its outputs "
        f"are noise) to {path}"
    )
    return 0


def cmd_pairs_make(a: argparse.Namespace) -> int:
    n = make_pairs(a.parallel, a.src_lang, a.out, a.tgt_langs.split(",") if a.tgt_langs else None)
    print(f"wrote {n} pairs to {a.out}")
    return 0


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; `argv` is looked at first for `--proc NAME=TYPE`, whose `--NAME.OPTION`s it adds."""
    p = _Parser(prog="xlmflow", description=__doc__)

    p.add_argument("-v", "--verbose", "--debug", action="store_true", help=_DEBUG_HELP)
    p.add_argument("--version", action="version", version=f"xlmflow {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="process one date partition of a corpus")
    r.add_argument("inputs", nargs="+", help="files, directories or globs, local or s3://")
    r.add_argument(
        "-v", "--verbose", "--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP
    )
    r.add_argument("--out", required=True, help="output root: a directory or s3://bucket/prefix")
    r.add_argument("--date", help="partition date YYYY-MM-DD (default: today, UTC)")
    add_job_options(r, argv)
    r.set_defaults(func=cmd_run)

    add_lease_parser(sub)

    add_tables_parsers(sub)

    m = sub.add_parser("models", help="model utilities").add_subparsers(dest="models_cmd", required=True)
    t = m.add_parser("tiny", help="write a tiny random XLM-R checkpoint with the real tokenizer (offline)")
    tiny = sorted(n for n, c in registry().items() if c.model_class)
    t.add_argument("--task", choices=tiny, required=True, help="the processor type the checkpoint is for")
    t.add_argument("--out", required=True)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=cmd_models_tiny)

    pa = sub.add_parser("pairs", help="pair utilities").add_subparsers(dest="pairs_cmd", required=True)
    mk = pa.add_parser("make", help="form src/mt pairs from a parallel corpus sharing ids across languages")
    mk.add_argument("parallel")
    mk.add_argument("--src-lang", required=True)
    mk.add_argument("--tgt-langs", help="comma list (default: every other language)")
    mk.add_argument("--out", required=True)
    mk.set_defaults(func=cmd_pairs_make)

    # these two import Prefect's flow machinery (3 s here): only when they, or the help, are asked for
    command = next((x for x in (argv or []) if not x.startswith("-")), None)
    if command in (None, "backfill", "deploy") or command not in sub.choices:
        _add_flow_commands(sub, argv)
    else:  # listed all the same: the usage line of an error names every command
        for name, help_ in _FLOW_COMMANDS.items():
            sub.add_parser(name, help=help_)
    return p


_FLOW_COMMANDS = {
    "backfill": "run one partition per date over a date range",
    "deploy": "create the daily and backfill deployments on a Prefect server",
}


def _add_flow_commands(sub, argv: list[str] | None) -> None:  # noqa: ANN001
    try:  # lazy: Prefect's flow machinery costs 3 s at CLI start
        from xlmflow.cli_flows import add_backfill_arguments, add_deploy_arguments, backfill_main, deploy_main
    except ImportError as exc:  # a broken install: say so rather than drop the commands
        raise ConfigError(
            f"the {' and '.join(_FLOW_COMMANDS)} commands cannot load: module {exc.name!r} is missing or "
            f"broken ({exc}); reinstall xlmflow with its dependencies (pip install -e .)"
        ) from exc
    b = sub.add_parser("backfill", help=_FLOW_COMMANDS["backfill"])
    add_backfill_arguments(b, argv)
    b.set_defaults(func=backfill_main)
    d = sub.add_parser("deploy", help=_FLOW_COMMANDS["deploy"])
    add_deploy_arguments(d, argv)
    d.set_defaults(func=deploy_main)


def _quiet_defaults() -> None:
    # offline-friendly defaults; an explicit environment always wins
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Prefect's temporary server gets 20 s to answer by default: too little on a busy 2-core machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


def entry() -> None:
    """The `xlmflow` console script: `main()`, then an exit without the interpreter's teardown.

    The exit handler is registered first, so it runs last: after Ray's and Prefect's own handlers have
    stopped the services they started; then torch, transformers and Ray's modules are not torn down
    one by one (seconds on a small machine), as every output is committed or failed by then.
    """
    rc = [0]

    def exit_now() -> None:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(rc[0])

    atexit.register(exit_now)
    try:
        rc[0] = main()
    except SystemExit as exc:  # argparse's usage errors (2), --help (0)
        code = exc.code
        rc[0] = code if isinstance(code, int) else (0 if code is None else 1)
        if isinstance(code, str):
            print(code, file=sys.stderr)
        raise
    sys.exit(rc[0])


def main(argv: list[str] | None = None) -> int:
    """Run one command; a failure ends with one `xlmflow: …` line on stderr saying what to change.

    Exit status:
      0    done (a run's bad rows are rejects, not failures);
      1    the run failed: storage or network errors after retries, no space left, no permission, an
           input or bucket that does not exist, anything unexpected; rerunning resumes from finished shards;
      2    configuration error: an option, model or URI must change (credentials embedded in a URI,
           pickle-only weights, unknown processor, …); nothing was started;
      3    the inputs of a committed partition changed; it was left as it is (--force recomputes it);
      130  interrupted (Ctrl-C, SIGINT); 143 terminated (SIGTERM); the partition's lease is released.
    The traceback is printed only with -v/--debug. Every message is redacted of URI credentials.
    """
    _quiet_defaults()
    argv = sys.argv[1:] if argv is None else argv
    try:
        parser = build_parser(argv)
    except ConfigError as exc:  # a processor plug-in that fails to load
        print(f"xlmflow: configuration error: {_one_line(redact(str(exc)))}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if args.func is not cmd_run:  # a run imports Prefect later, and sets this up after it
        _configure_logging(args.verbose)
    try:
        if getattr(args, "date", None) is not None:  # every command's --date, before it is used
            args.date = check_date(args.date)
        return args.func(args)
    except (Exception, KeyboardInterrupt) as exc:
        # a signal may surface as whatever the code it interrupted made of it
        code, msg = interrupt.outcome() or explain(exc, getattr(args, "out", None))
        if args.verbose:
            print(redact("".join(traceback.format_exception(exc))), file=sys.stderr, end="")
        print(f"xlmflow: {_one_line(redact(msg))}", file=sys.stderr)
        interrupt.mark_reported(quiet=not args.verbose)
        if not args.verbose:
            silence_console()  # that line stays the last one on the terminal
        return code


def _configure_logging(verbose: bool) -> None:
    # after Prefect's import, which installs its console handlers: then basicConfig adds nothing, Prefect's
    # log lines keep their format, and the tracebacks they may carry are taken off the console
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not verbose:
        hide_console_tracebacks()


def _one_line(msg: str) -> str:
    return re.sub(r"\s*\n\s*", " ", msg.strip())


class _Parser(argparse.ArgumentParser):
    """argparse, with any URI credentials in its error messages redacted."""

    def error(self, message: str) -> NoReturn:
        super().error(redact(message))


if __name__ == "__main__":
    entry()  # as the console script: no interpreter teardown after the exit handlers
