"""Driver memory and stage times of `xlmflow run --tasks lid` as the partition grows, for two checkouts.

Each run is the console script against a Ray head started for it with `--num-cpus C` (the CLI's
driver, Ray's processes and a temporary Prefect API share this machine). Reported per run: the driver's
peak RSS (VmHWM of the `xlmflow run` process, polled), wall time, the manifest's stage seconds, and
ingest rows/s (input rows / ingest-side seconds: `ingest` + `shard` for the sequential code, `ingest`
for the distributed one). Documents are ~200 characters cut from UDHR paragraphs of 80 languages, each
made distinct by a number, so dedup keeps them all.

    .venv/bin/python benchmarks/scale_run.py --docs 100000 1000000 --code new=. old=/tmp/xlmflow-old \
        --cpus 2 [--also-cpus 1]

A checkout other than this one runs with its own `.venv` (`bash scripts/setup.sh` in it; its Ray head
too, so its workers import the same code): xlmflow installs its folders under the `xlmflow` namespace,
so PYTHONPATH cannot switch checkouts. `git worktree add /tmp/xlmflow-old <commit>` makes one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from benchmarks.common import add_corpus_argument, read_corpus  # noqa: E402


def interpreter(code: str) -> str:
    """The Python that runs checkout `code`: this one for this checkout, else the checkout's own .venv."""
    if os.path.abspath(code) == os.path.abspath(os.path.join(HERE, "..")):
        return sys.executable
    py = os.path.join(os.path.abspath(code), ".venv", "bin", "python")
    if not os.path.exists(py):
        sys.exit(f"{code}: no .venv; run `bash scripts/setup.sh` in that checkout first")
    return py


def make_corpus(source: str, n: int, path: str) -> None:
    texts = [r["text"] for r in read_corpus(source)]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            t = texts[i % len(texts)]
            start = (i // len(texts)) * 37 % max(1, len(t) - 200)
            f.write(
                json.dumps({"id": f"d{i}", "text": f"{t[start : start + 190]} {i}"}, ensure_ascii=False)
                + "\n"
            )


def run_one(code: str, corpus: str, cpus: int, out: str) -> dict:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("PREFECT_API_URL", None)
    py = interpreter(code)
    ray = os.path.join(os.path.dirname(py), "ray")
    port = 6390 + cpus
    subprocess.run([ray, "stop", "--force"], capture_output=True, env=env)
    subprocess.run(
        [ray, "start", "--head", f"--num-cpus={cpus}", f"--port={port}", "--include-dashboard=false"],
        check=True, capture_output=True, env=env, cwd=code,
    )  # fmt: skip
    try:
        t0 = time.perf_counter()
        args = [py, "-m", "xlmflow.cli", "run", corpus, "--out", out, "--tasks", "lid", "--date", "2026-11-30",
                "--ray-address", "auto"]  # fmt: skip
        p = subprocess.Popen(
            args, env=env, cwd=code, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        peak = 0
        while p.poll() is None:
            try:
                with open(f"/proc/{p.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            peak = max(peak, int(line.split()[1]) * 1024)
            except FileNotFoundError:
                pass
            time.sleep(0.05)
        err = p.stderr.read() if p.stderr else ""
        wall = time.perf_counter() - t0
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, env=env)
    if p.returncode:
        raise SystemExit(f"run failed ({code}): {err[-2000:]}")
    m = json.load(open(os.path.join(out, "_manifests", "date=2026-11-30.json")))
    stages = m.get("stages", {})
    ingest_s = stages.get("ingest", 0) + stages.get("shard", 0)
    return {
        "rows": m["counts"]["input_rows"],
        "documents": m["counts"]["documents"],
        "driver_peak_mb": round(peak / 2**20),
        "wall_s": round(wall, 1),
        "stages": stages,
        "ingest_rows_per_s": round(m["counts"]["input_rows"] / ingest_s) if ingest_s else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_corpus_argument(ap)
    ap.add_argument("--docs", type=int, nargs="+", default=[100_000])
    ap.add_argument("--code", nargs="+", default=["new=."], help="name=checkout ...")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument(
        "--also-cpus", type=int, nargs="*", default=[], help="extra CPU counts (first --code only)"
    )
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="scale-run-")
    codes = [c.split("=", 1) for c in a.code]
    for n in a.docs:
        corpus = os.path.join(tmp, f"docs-{n}.jsonl")
        make_corpus(a.corpus, n, corpus)
        size = os.path.getsize(corpus)
        runs = [(name, code, a.cpus) for name, code in codes]
        runs += [(codes[0][0], codes[0][1], c) for c in a.also_cpus]
        for name, code, cpus in runs:
            out = os.path.join(tmp, f"out-{name}-{n}-{cpus}")
            r = run_one(code, corpus, cpus, out)
            print(
                json.dumps({"code": name, "docs": n, "input_mb": round(size / 1e6, 1), "cpus": cpus, **r}),
                flush=True,
            )
            subprocess.run(["rm", "-rf", out])
        os.remove(corpus)


if __name__ == "__main__":
    main()
