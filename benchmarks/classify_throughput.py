"""classify throughput: the classify processor vs transformers' text-classification pipeline, one run.

The model is XLM-R-base shaped (hidden 768, 12 layers, 12 heads, random weights) with the real XLM-R
tokenizer and a 3-label single-label sequence-classification head (a sentiment checkpoint's shape); the
documents are UDHR paragraphs in 80 languages from the repository's tests/data/parallel.jsonl (or --corpus), sampled with a
fixed seed.

- xlmflow: the `classify` processor's three phases over a batch (`process_batch`: tokenize + windows,
  length-sorted token-budget batches through the shared Engine, softmax and rows), as an actor runs them;
- pipeline: `pipeline("text-classification", top_k=None)` with `batch_size=16`, same model object.
Rounds alternate the order of the two sides (ABBA...), so load from other jobs falls on both.

    .venv/bin/python benchmarks/classify_throughput.py --device cpu --docs 256 --threads 2
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks.common import add_corpus_argument, read_corpus  # noqa: E402


def build_model(out: str) -> str:
    """XLM-R-base-shaped 3-label classifier (random weights) with the real tokenizer."""
    from xlmflow.ray_cluster.models import BASE_SHAPE, make_tiny_xlmr

    labels = ["negative", "neutral", "positive"]
    cfg = {
        **BASE_SHAPE,
        "id2label": dict(enumerate(labels)),
        "label2id": {lab: i for i, lab in enumerate(labels)},
        "problem_type": "single_label_classification",
    }
    return make_tiny_xlmr("classify", "AutoModelForSequenceClassification", out, 0, cfg)


def load_docs(n: int, corpus: str) -> list[str]:
    texts = [r["text"] for r in read_corpus(corpus)]
    texts = texts * -(-n // len(texts))
    return random.Random(0).sample(texts, n)


# long: the benchmark's steps in the order they run, read in one place
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--docs", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-batch-tokens", type=int, default=8192)
    add_corpus_argument(ap)
    a = ap.parse_args()

    import pyarrow as pa
    import torch
    import transformers
    from transformers import pipeline

    from xlmflow.ray_cluster.processors.base import build_processors
    from xlmflow.ray_cluster.registry import make_settings
    from xlmflow.schemas import STAGED_DOCS

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(a.threads)
    docs = load_docs(a.docs, a.corpus)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_model(os.path.join(tmp, "m"))
        s = make_settings(
            inputs=("x",), out=tmp, tasks="classify", classify_model=path, max_batch_tokens=a.max_batch_tokens
        )
        (proc,) = build_processors(s)
        proc.setup(a.device)
        eng = proc.engine
        pl = pipeline(
            "text-classification", model=eng.model, tokenizer=eng.tokenizer, top_k=None, device=eng.device
        )
        n_tokens = sum(len(w.input_ids) for w in eng.windows(eng.tokenize(docs)))

        def table(texts: list[str]) -> pa.Table:
            rows = [{"doc_id": str(i), "text": t, "source": "b", "source_row": i, "n_chars": len(t), "meta": "{}"} for i, t in enumerate(texts)]  # fmt: skip
            return pa.Table.from_pylist(rows, schema=STAGED_DOCS)

        def sync() -> None:
            if eng.device == "cuda":
                torch.cuda.synchronize()

        proc.process_batch(table(docs[:16]))  # warm-up outside the timing
        pl(docs[:16], batch_size=16, truncation=True)
        ours_s = ref_s = 0.0
        ratios: list[float] = []  # per round: pipeline seconds / xlmflow seconds on the same chunk
        ours: list[dict] = []
        ref: list = []
        size = -(-len(docs) // a.rounds)
        for k, off in enumerate(range(0, len(docs), size)):
            chunk = docs[off : off + size]
            took = {}
            for side in ("pipeline", "xlmflow") if k % 2 == 0 else ("xlmflow", "pipeline"):
                sync()
                t0 = time.perf_counter()
                if side == "pipeline":
                    ref += pl(chunk, batch_size=16, truncation=True)
                else:
                    ours += proc.process_batch(table(chunk)).datasets["classifications"].to_pylist()
                sync()
                dt = time.perf_counter() - t0
                print(f"round {k} {side}: {len(chunk)} docs in {dt:.1f}s", flush=True)
                took[side] = dt
                if side == "pipeline":
                    ref_s += dt
                else:
                    ours_s += dt
            ratios.append(took["pipeline"] / took["xlmflow"])

    diff = max(
        abs({s["label"]: s["score"] for s in o["scores"]}[r["label"]] - r["score"])
        for o, want in zip(ours, ref, strict=True)
        for r in want
    )
    same = sum(o["label"] == want[0]["label"] for o, want in zip(ours, ref, strict=True))
    n = len(docs)
    dev = torch.cuda.get_device_name() if a.device == "cuda" else f"CPU, torch threads {a.threads}"
    print(f"\n{n} documents ({n_tokens} tokens with specials), {dev}, fp32\n")
    print("| path | settings | seconds | docs/s | tokens/s |")
    print("|---|---|---|---|---|")
    print(f"| text-classification pipeline | top_k=None, batch_size=16 | {ref_s:.1f} | {n / ref_s:.2f} | {n_tokens / ref_s:.0f} |")  # fmt: skip
    print(f"| xlmflow classify (process_batch) | max_batch_tokens {a.max_batch_tokens} | {ours_s:.1f} | {n / ours_s:.2f} | {n_tokens / ours_s:.0f} |")  # fmt: skip
    import statistics

    print(
        f"\nratio xlmflow/pipeline: {ref_s / ours_s:.2f}x over all rounds, median of the rounds' ratios "
        f"{statistics.median(ratios):.2f}x ({', '.join(f'{r:.2f}' for r in ratios)}); top label equal on "
        f"{same}/{n}; max |score diff| {diff:.1e} (the pipeline truncates documents over 512 tokens)"
    )


if __name__ == "__main__":
    main()
