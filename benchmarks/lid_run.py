"""The `lid` stage of a real `xlmflow run --tasks lid` on 200k+ distinct UDHR-based documents.

Documents are two UDHR paragraphs of one language joined (distinct ordered pairs, so exact dedup keeps
them all). The run is the console script (temporary Prefect API, local Ray, actors, Delta commit); the
figures come from the run's manifest: documents, which detector decided them, and the seconds of the
`process` stage (the actors running the lid processor) and of the whole run.

    .venv/bin/python benchmarks/lid_run.py --docs 200000 [--actors 2]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from benchmarks.common import add_corpus_argument, read_corpus  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_corpus_argument(ap)
    ap.add_argument("--docs", type=int, default=200_000)
    ap.add_argument("--actors", type=int, default=None)
    a = ap.parse_args()
    by = collections.defaultdict(list)
    for r in read_corpus(a.corpus):
        by[r["lang"]].append(r["text"])
    tmp = tempfile.mkdtemp(prefix="lid-run-")
    src = os.path.join(tmp, "docs.jsonl")
    n = 0
    with open(src, "w", encoding="utf-8") as f:
        for k in range(1, 60):
            for lang, texts in sorted(by.items()):
                for i in range(len(texts)):
                    if n == a.docs:
                        break
                    j = (i + k) % len(texts)
                    if j != i:
                        f.write(
                            json.dumps({"id": f"{lang}:{i}:{j}", "text": f"{texts[i]} {texts[j]}"}) + "\n"
                        )
                        n += 1
    out = os.path.join(tmp, "out")
    cmd = [os.path.join(os.path.dirname(sys.executable), "xlmflow"), "run", src, "--out", out]
    cmd += ["--date", "2026-11-01", "--tasks", "lid"] + (["--actors", str(a.actors)] if a.actors else [])
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode:
        sys.exit(p.stderr[-3000:])
    m = json.load(open(os.path.join(out, "_manifests", "date=2026-11-01.json")))
    docs = m["counts"]["documents"]
    print(f"{n} input documents; {docs} documents, {m['counts']['rejects']} rejects")
    print(f"decided by: {m['counts'].get('lid_decided_by')}")
    print(f"actors: {len(m['actors'])} ({', '.join(x['device'] for x in m['actors'])})")
    print(f"stages (s): {m['stages']}")
    print(f"lid stage (process): {docs / m['stages']['process']:,.0f} documents/s")
    print(f"whole run: {wall:.1f} s wall, {docs / wall:,.0f} documents/s")


if __name__ == "__main__":
    main()
