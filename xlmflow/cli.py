"""`xlmflow` command line: run a partition, make tiny models and pairs, deploy, backfill."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import re
import sys
import traceback
from typing import NoReturn

from xlmflow.errors import ConfigError, InputsChangedError
from xlmflow.failures import explain, hide_console_tracebacks
from xlmflow.uris import redact

_DEBUG_HELP = "debug logs, and the traceback of a failure"


def _date(s: str) -> str:
    try:
        return dt.date.fromisoformat(s).isoformat()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {s!r}") from exc


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "models (HF id, local dir, s3:// prefix, or 'tiny' for the offline smoke-test model)"
    )
    g.add_argument("--ner-model")
    g.add_argument("--ner-aggregation", choices=["simple", "first", "average", "max"])
    g.add_argument("--embed-model")
    g.add_argument("--embed-pooling", choices=["mean", "lawdr"])
    g.add_argument("--qe-model")
    g.add_argument("--qe-method", choices=["regression", "cosine"], default="regression")
    g.add_argument("--qe-order", choices=["src-mt", "mt-src"], help="input order of the cross-encoder")
    g.add_argument("--qe-target-lang", help="expected language of translations, e.g. deu_Latn")
    g.add_argument("--stride", type=int, help="token overlap between windows of long documents")
    g.add_argument("--max-batch-tokens", type=int, help="padded tokens per model batch")
    g.add_argument("--gpu-fraction", type=float, help="GPUs per actor (e.g. 0.5 packs two actors per GPU)")
    g.add_argument("--model-cache", help="local cache for models copied from s3://")


def option_dict(a: argparse.Namespace) -> dict:
    """RunSettings fields given on the command line (beyond the flow's named parameters)."""
    keys = [
        "ner_aggregation",
        "embed_pooling",
        "qe_order",
        "qe_target_lang",
        "stride",
        "max_batch_tokens",
        "gpu_fraction",
        "model_cache",
        "shard_chars",
        "max_text_chars",
        "max_record_bytes",
        "max_file_bytes",
        "lease_ttl",
        "lock_timeout",
        "dedup_buckets",
        "shared_out",
    ]
    opts = {k: getattr(a, k) for k in keys if getattr(a, k, None) is not None}
    if getattr(a, "split_mb", None):
        opts["split_bytes"] = max(1, int(a.split_mb * 1024 * 1024))
    if getattr(a, "target_file_mb", None):
        opts["target_file_bytes"] = int(a.target_file_mb * 1024 * 1024)
    return opts


def _precheck_run(a: argparse.Namespace) -> None:
    """Fail fast, before Ray and Prefect start: credentials in URIs, inputs that match nothing, models
    that cannot load (unsafe s3:// keys, pickle-only weights)."""
    from ray_cluster.models import precheck
    from tasks.ingest import expand_inputs
    from xlmflow.uris import REFUSED, has_userinfo

    # before any library sees them: botocore would print the secret, Prefect would store it
    named = [(f"input {i}", u) for i, u in enumerate(a.inputs, 1)] + [("--out", a.out)]
    named += [(f"--{t}-model", getattr(a, f"{t}_model", None)) for t in ("ner", "embed", "qe")]
    bad = [what for what, uri in named if uri and has_userinfo(uri)]
    if bad:
        raise ConfigError(f"{', '.join(bad)}: {REFUSED}")
    expand_inputs(a.inputs)
    remote = a.ray_address or os.environ.get("RAY_ADDRESS")  # actors may see other directories than we do
    for t in ("ner", "embed", "qe"):
        precheck(getattr(a, f"{t}_model", None), local_actors=not remote)


def cmd_run(a: argparse.Namespace) -> int:
    from flows.corpus import corpus_flow
    from tasks.report import print_summary
    from xlmflow import reaper

    reaper.start()  # the temporary Prefect server and a local Ray must not outlive this process
    _precheck_run(a)
    res = corpus_flow(
        inputs=a.inputs,
        out=a.out,
        date=a.date,
        tasks=a.tasks,
        force=a.force,
        ray_address=a.ray_address,
        actors=a.actors,
        ner_model=a.ner_model,
        embed_model=a.embed_model,
        qe_model=a.qe_model,
        qe_method=a.qe_method,
        options=option_dict(a),
    )
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


def cmd_models_tiny(a: argparse.Namespace) -> int:
    from ray_cluster.models import make_tiny

    path = make_tiny(a.task, a.out, seed=a.seed)
    print(
        f"wrote a tiny random-weight XLM-R {a.task} checkpoint (smoke tests only: its outputs are noise) to {path}"
    )
    return 0


def cmd_pairs_make(a: argparse.Namespace) -> int:
    from tasks.pairs import make_pairs

    n = make_pairs(a.parallel, a.src_lang, a.out, a.tgt_langs.split(",") if a.tgt_langs else None)
    print(f"wrote {n} pairs to {a.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="xlmflow", description=__doc__)
    p.add_argument("-v", "--verbose", "--debug", action="store_true", help=_DEBUG_HELP)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="process one date partition of a corpus")
    r.add_argument("inputs", nargs="+", help="files, directories or globs, local or s3://")
    r.add_argument(
        "-v", "--verbose", "--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP
    )
    r.add_argument("--out", required=True, help="output root: a directory or s3://bucket/prefix")
    r.add_argument("--date", type=_date, help="partition date YYYY-MM-DD (default: today, UTC)")
    r.add_argument("--tasks", default="lid", help="comma list of lid,ner,embed or qe (default: lid)")
    r.add_argument("--ray-address", help="existing Ray cluster (default: start a local Ray)")
    r.add_argument("--actors", type=int, help="actors in the pool (default: one per GPU, else CPUs/4)")
    r.add_argument("--force", action="store_true", help="recompute a committed partition and replace it")
    r.add_argument("--shard-chars", type=int, help="characters per shard (default 2,000,000)")
    r.add_argument("--target-file-mb", type=float, help="target Parquet file size in MB (default 128)")
    r.add_argument(
        "--split-mb", type=float, help="input MB one ingest task reads (default 64; files are cut)"
    )
    r.add_argument(
        "--shared-out",
        action="store_true",
        default=None,
        help="a local --out is mounted at the same path on every Ray node (else a remote cluster needs s3://)",
    )
    r.add_argument("--dedup-buckets", type=int, help="hash buckets of dedup (default: from the input size)")
    r.add_argument("--max-text-chars", type=int, help="longer texts are rejected as too_long")
    r.add_argument(
        "--max-record-bytes",
        type=int,
        help="longer lines/records are too_long rejects, skipped unread (default 4 x --max-text-chars)",
    )
    r.add_argument(
        "--max-file-bytes",
        type=int,
        help="decompressed bytes read per file; the rest is one file_too_large reject (default 32 GiB)",
    )
    r.add_argument(
        "--lock-timeout",
        type=float,
        help="seconds to wait while another run holds the partition (default 300)",
    )
    r.add_argument("--lease-ttl", type=float, help="seconds a partition lease lives without a heartbeat")
    add_model_options(r)
    r.set_defaults(func=cmd_run)

    from xlmflow.lease_cli import add_lease_parser

    add_lease_parser(sub)

    from xlmflow.tables_cli import add_tables_parsers

    add_tables_parsers(sub)

    m = sub.add_parser("models", help="model utilities").add_subparsers(dest="models_cmd", required=True)
    t = m.add_parser("tiny", help="write a tiny random XLM-R checkpoint with the real tokenizer (offline)")
    t.add_argument("--task", choices=["ner", "embed", "qe"], required=True)
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

    try:
        from flows.backfill import add_backfill_arguments, backfill_main
        from flows.deploy import add_deploy_arguments, deploy_main
    except ImportError:
        pass
    else:
        b = sub.add_parser("backfill", help="run one partition per date over a date range")
        add_backfill_arguments(b)
        b.set_defaults(func=backfill_main)
        d = sub.add_parser("deploy", help="create the daily and backfill deployments on a Prefect server")
        add_deploy_arguments(d)
        d.set_defaults(func=deploy_main)
    return p


def _quiet_defaults() -> None:
    # offline-friendly defaults; an explicit environment always wins
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    """Run one command; a failure ends with one `xlmflow: …` line on stderr saying what to change.

    Exit status:
      0    done (a run's bad rows are rejects, not failures);
      1    the run failed: storage or network errors after retries, no space left, no permission, an
           input or bucket that does not exist, anything unexpected; rerunning resumes from finished shards;
      2    configuration error: an option, model or URI must change (credentials embedded in a URI,
           pickle-only weights, unknown task, …); nothing was started;
      3    the inputs of a committed partition changed; it was left as it is (--force recomputes it);
      130  interrupted (Ctrl-C).
    The traceback is printed only with -v/--debug. Every message is redacted of URI credentials.
    """
    _quiet_defaults()
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:
        hide_console_tracebacks()
    try:
        return args.func(args)
    except (Exception, KeyboardInterrupt) as exc:
        code, msg = explain(exc, getattr(args, "out", None))
        if args.verbose:
            print(redact("".join(traceback.format_exception(exc))), file=sys.stderr, end="")
        print(f"xlmflow: {_one_line(redact(msg))}", file=sys.stderr)
        if not args.verbose:
            # that line stays the last one: Prefect's services may still log while draining at exit
            logging.disable(logging.CRITICAL)
        return code


def _one_line(msg: str) -> str:
    return re.sub(r"\s*\n\s*", " ", msg.strip())


class _Parser(argparse.ArgumentParser):
    """argparse, with any URI credentials in its error messages redacted."""

    def error(self, message: str) -> NoReturn:
        super().error(redact(message))


if __name__ == "__main__":
    sys.exit(main())
