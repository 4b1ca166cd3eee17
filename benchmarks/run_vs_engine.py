"""Whole `xlmflow run --tasks ner` throughput against the bare NER engine, same model, same docs, same threads.

Engine side: `NerProcessor.process()` on one Arrow table of all documents, in a fresh subprocess, model
loaded and warmed up beforehand (tokenization, batching, forward and entity aggregation are timed).
Run side: the `xlmflow run` console script as a subprocess (one actor, `--tasks ner`), timed end to end
(Prefect's temporary server, ingest, sharding, Ray start, actor model load, processing, Parquet commit),
and the processing stage alone, read off the timestamps of the flow's log lines (pool ready -> process
task finished: the actor reads its shard, runs the same processor, writes Arrow results and its marker).
Both sides: content tokens of the same documents / seconds; torch threads = CPUs (the actor of a
one-actor pool gets all CPUs and sets torch's threads to them). Sides alternate (E R, R E, ...).

Niceness: Ray starts its workers, our actor included, at niceness 15 (`RAY_worker_niceness`), so on a
machine shared with other jobs the actor gets a smaller CPU share than a process at 0. The engine side
therefore runs in a fresh subprocess at `--engine-nice` (default 15, the actor's), so that both sides
compete equally with whatever else runs; `--engine-nice 0` measures it as an ordinary process.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/run_vs_engine.py --corpus ARTICLES.jsonl --docs 1600 --reps 2   # ~20 min here

Results: benchmarks/run_results.md. `--run-env RAY_worker_niceness=0` runs the actor at niceness 0.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]
from ner_throughput import build_base_model  # noqa: E402

from benchmarks.common import add_corpus_argument, read_corpus  # noqa: E402

DATE = "2026-11-01"


def build_corpus(source: str, path: str, n: int, seed: int = 0) -> list[dict]:
    """n unique UDHR articles (shuffled); past the 2,551 unique ones, two random articles joined."""
    texts = list(dict.fromkeys(r["text"] for r in read_corpus(source)))
    rng = random.Random(seed)
    rng.shuffle(texts)
    docs = texts[:n]
    seen = set(docs)
    while len(docs) < n:  # the flow drops exact duplicates, so repeated text must differ
        t = f"{rng.choice(texts)}\n{rng.choice(texts)}"
        if t not in seen:
            seen.add(t)
            docs.append(t)
    recs = [{"id": f"bench-{i:06d}", "text": t} for i, t in enumerate(docs)]
    with open(path, "w", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return recs


def ensure_model(workdir: str) -> str:
    """The XLM-R-base-shaped NER checkpoint of ner_throughput.py, built once into workdir."""
    final = os.path.join(workdir, "xlmr-base-ner-random")
    if not os.path.exists(os.path.join(final, "config.json")):
        tmp = final + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        build_base_model(tmp)
        os.rename(tmp, final)
    return final


class EngineSide:
    def __init__(self, model_dir: str, corpus: str, recs: list[dict], threads: int, workdir: str) -> None:
        import pyarrow as pa
        import torch

        from xlmflow.ray_cluster.processors.base import build_processors
        from xlmflow.ray_cluster.registry import make_settings

        torch.set_num_threads(threads)
        settings = make_settings(
            inputs=[corpus], out=os.path.join(workdir, "unused"), tasks="ner", ner_model=model_dir, actors=1
        )
        (self.proc,) = build_processors(settings)
        t0 = time.perf_counter()
        self.proc.setup("cpu")
        self.load_s = time.perf_counter() - t0
        self.table = pa.table(
            {
                "doc_id": [r["id"] for r in recs],
                "text": [r["text"] for r in recs],
                "source": [corpus] * len(recs),
                "source_row": list(range(1, len(recs) + 1)),
            }
        )
        self.tokens = sum(len(d.ids) for d in self.proc.engine.tokenize(self.table["text"].to_pylist()))
        self.proc.process(self.table.slice(0, 8))  # warm-up outside the timing

    def measure(self) -> dict:
        t0 = time.perf_counter()
        out = self.proc.process(self.table)
        secs = time.perf_counter() - t0
        ents = sum(t.num_rows for t in out.datasets.get("entities", []))
        return {"seconds": secs, "entities": ents, "rejects": len(out.rejects)}


STAMP = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) \| \w+\s+\| (.*)$")
MARKS = {  # stage boundary -> a pattern of the flow's log line that ends it
    "flow_started": r"Beginning flow run",
    "sharded": r"Task run 'shard-.*Finished in state",
    "pool_ready": r"Task run 'process-.* pool: ",
    "processed": r"Task run 'process-.*Finished in state",
    "committed": r"Task run 'commit-.*Finished in state",
    "flow_finished": r"Flow run .*Finished in state",
}


def stage_marks(log_text: str, start: float) -> dict[str, float]:
    """Seconds since the subprocess started at which each MARKS line was logged (local-time stamps)."""
    day = dt.datetime.fromtimestamp(start).replace(hour=0, minute=0, second=0, microsecond=0)
    out: dict[str, float] = {}
    for line in log_text.splitlines():
        m = STAMP.match(line)
        if not m:
            continue
        h, mi, s, ms, msg = int(m[1]), int(m[2]), int(m[3]), int(m[4]), m[5]
        t = day.replace(hour=h, minute=mi, second=s, microsecond=ms * 1000).timestamp()
        if t < start - 60:  # the run crossed midnight
            t += 86400
        for name, pat in MARKS.items():
            if name not in out and re.search(pat, msg):
                out[name] = t - start
    return out


def run_side(corpus: str, model_dir: str, workdir: str, rep: int, extra_env: dict[str, str]) -> dict:
    out = os.path.join(workdir, f"run-out-{rep}")
    shutil.rmtree(out, ignore_errors=True)
    exe = os.path.join(os.path.dirname(sys.executable), "xlmflow")
    cmd = [exe, "run", corpus, "--out", out, "--date", DATE, "--tasks", "ner", "--ner-model", model_dir]
    cmd += ["--actors", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra_env}
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    start = time.time()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    log_text = proc.stdout + proc.stderr
    with open(os.path.join(workdir, f"run-{rep}.log"), "w") as f:
        f.write(" ".join(cmd) + "\n" + log_text)
    if proc.returncode:
        raise SystemExit(f"xlmflow run failed ({proc.returncode}):\n{log_text[-3000:]}")
    with open(os.path.join(out, "_manifests", f"date={DATE}.json")) as f:
        man = json.load(f)
    marks = stage_marks(log_text, start)
    return {
        "cmd": " ".join(cmd),
        "wall": wall,
        "marks": marks,
        "processing": marks["processed"] - marks["pool_ready"],
        "manifest_seconds": man["throughput"]["seconds"],
        "manifest_stages": man.get("stages", {}),
        "actor_setup": man["actors"][0]["setup_seconds"],
        "counts": man["counts"],
        "shards": man["shards"]["total"],
    }


def engine_side(a: argparse.Namespace, corpus: str, model_dir: str) -> dict:
    """One engine measurement in a fresh subprocess at niceness --engine-nice (all its threads inherit it)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--engine-worker", "--threads", str(a.threads)]
    cmd += ["--workdir", a.workdir, "--corpus", a.corpus, "--corpus-file", corpus, "--model-dir", model_dir]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, preexec_fn=lambda: os.nice(a.engine_nice)
    )
    for line in proc.stdout.splitlines():
        if line.startswith("ENGINE_RESULT "):
            return json.loads(line[len("ENGINE_RESULT ") :])
    raise SystemExit(f"engine side failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")


def engine_worker(a: argparse.Namespace) -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    with open(a.corpus_file, encoding="utf-8") as f:
        recs = [json.loads(line) for line in f]
    eng = EngineSide(a.model_dir, a.corpus_file, recs, a.threads, a.workdir)
    res = eng.measure()
    res.update(load_s=eng.load_s, tokens=eng.tokens, nice=os.nice(0))
    print("ENGINE_RESULT " + json.dumps(res), flush=True)


# long: the benchmark's steps in the order they run, read in one place
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_corpus_argument(ap, articles=True)
    ap.add_argument("--docs", type=int, default=1600)
    ap.add_argument("--reps", type=int, default=2, help="engine/run pairs, order alternating")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (the actor uses CPUs)")
    ap.add_argument("--engine-nice", type=int, default=15, help="niceness of the engine side (Ray's: 15)")
    ap.add_argument("--run-env", action="append", default=[], help="KEY=VALUE for the xlmflow run only")
    ap.add_argument("--workdir", default="/tmp/xlmflow-run-vs-engine")
    ap.add_argument("--engine-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--corpus-file", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.engine_worker:
        engine_worker(a)
        return

    from transformers import AutoTokenizer

    os.makedirs(a.workdir, exist_ok=True)
    corpus = os.path.join(a.workdir, "corpus.jsonl")
    recs = build_corpus(a.corpus, corpus, a.docs)
    t0 = time.perf_counter()
    model_dir = ensure_model(a.workdir)
    print(f"model ready in {time.perf_counter() - t0:.1f}s")
    tok = AutoTokenizer.from_pretrained(model_dir)
    tokens = sum(len(x) for x in tok([r["text"] for r in recs], add_special_tokens=False)["input_ids"])
    chars = sum(len(r["text"]) for r in recs)
    print(f"{len(recs)} docs, {chars} chars, {tokens} content tokens, torch threads {a.threads}", flush=True)

    run_env = dict(kv.split("=", 1) for kv in a.run_env)
    results: dict[str, list[dict]] = {"engine": [], "run": []}
    for rep in range(a.reps):
        order = ["engine", "run"] if rep % 2 == 0 else ["run", "engine"]
        for side in order:
            load = os.getloadavg()[0]
            r = (
                engine_side(a, corpus, model_dir)
                if side == "engine"
                else run_side(corpus, model_dir, a.workdir, rep, run_env)
            )
            r["load_before"] = load
            r["load_after"] = os.getloadavg()[0]
            results[side].append(r)
            secs = r["seconds"] if side == "engine" else r["wall"]
            print(f"rep {rep} {side}: {secs:.1f}s  {tokens / secs:.0f} tokens/s  load {load:.2f}", flush=True)
            if side == "run":
                print(f"  processing stage {r['processing']:.1f}s  marks {r['marks']}", flush=True)
            else:
                print(f"  niceness {r['nice']}, tokens counted by the engine {r['tokens']}", flush=True)

    e_tps = [tokens / r["seconds"] for r in results["engine"]]
    r_tps = [tokens / r["wall"] for r in results["run"]]
    p_tps = [tokens / r["processing"] for r in results["run"]]
    e_med = statistics.median(e_tps)
    print(f"\nengine niceness {a.engine_nice}; run env {run_env}")
    print("| side | tokens/s per rep | median | / engine |")
    print("|---|---|---|---|")
    for name, xs in (
        ("engine (process())", e_tps),
        ("run end-to-end", r_tps),
        ("run processing stage", p_tps),
    ):
        med = statistics.median(xs)
        print(f"| {name} | {', '.join(f'{x:.0f}' for x in xs)} | {med:.0f} | {med / e_med:.1%} |")
    for r in results["run"]:
        m = r["marks"]
        print(
            f"run stages (s): prefect server {m['flow_started']:.1f}, ingest+ray+actor start "
            f"{m['pool_ready'] - m['flow_started']:.1f} "
            f"(actor setup {r['actor_setup']:.1f}), processing {r['processing']:.1f}, commit "
            f"{m['committed'] - m['processed']:.1f}, report+exit {r['wall'] - m['committed']:.1f}; "
            f"entities {r['counts'].get('entities')}, rejects {r['counts']['rejects']}, shards {r['shards']}; "
            f"manifest stages {r['manifest_stages']}"
        )
    print(f"engine entities {[r['entities'] for r in results['engine']]}")
    out = os.path.join(a.workdir, f"results-{time.strftime('%H%M%S')}.json")
    with open(out, "w") as f:
        json.dump(
            {"args": vars(a), "tokens": tokens, "docs": len(recs), "chars": chars, **results}, f, indent=1
        )


if __name__ == "__main__":
    main()
