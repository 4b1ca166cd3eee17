"""GPU check of the actor path and of OOM splitting, on a real CUDA device (no Ray needed).

1. The ShardWorker (the Ray actor's body, run in-process) with `ner,embed` on an XLM-R-base-shaped
   model: picks CUDA, processes a shard of UDHR articles, writes entities and embeddings; we check the
   counts, unit-norm vectors, and time it.
2. Out-of-memory splitting: with this process limited to a small slice of GPU memory
   (`torch.cuda.set_per_process_memory_fraction`) and a token budget far too big for it, the engine must
   hit real CUDA OOMs, split the batches and still return the same entities as a run with a budget that
   fits.

    python3 benchmarks/gpu_actor_check.py --device cuda --tokenizer .gpu/tokenizer.json \
        --corpus .gpu/parallel_articles.jsonl
Needs torch, transformers, pyarrow, fsspec, pydantic (carried as wheels on the device machine).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.path.dirname(__file__)]
from gpu_check import build_model, load_docs  # noqa: E402

T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


class CountOOM(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.splits = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "out of memory" in record.getMessage():
            self.splits += 1


# long: the benchmark's steps in the order they run, read in one place
def actor_path(a, model_dir: str, texts: list[str], results: dict) -> None:  # noqa: ANN001
    import shutil

    import pyarrow as pa

    from xlmflow import schemas, storage
    from xlmflow.ray_cluster.actor import ShardWorker
    from xlmflow.ray_cluster.registry import make_settings

    work = os.path.join(a.workdir, "actor")
    shutil.rmtree(work, ignore_errors=True)  # a finished shard is never redone: start clean
    settings = make_settings(
        inputs=("udhr",),
        out=work,
        tasks=("ner", "embed"),
        ner_model=model_dir,
        embed_model=model_dir,
        max_batch_tokens=a.max_batch_tokens,
    )
    rows = [
        {
            "doc_id": f"d{i}",
            "text": t,
            "lang_hint": None,
            "n_chars": len(t),
            "source": "udhr",
            "source_row": i + 1,
            "meta": "{}",
        }
        for i, t in enumerate(texts)
    ]
    uri = os.path.join(work, "shards", "00000-check.arrow")
    storage.write_table_ipc(uri, pa.Table.from_pylist(rows, schema=schemas.STAGED_DOCS))
    shard = {"shard_id": "00000-check", "uri": uri, "rows": len(rows), "chars": sum(map(len, texts))}
    t = time.perf_counter()
    worker = ShardWorker(settings.model_dump_json(), num_cpus=8)
    setup = time.perf_counter() - t
    say(f"worker device={worker.device}, setup {setup:.1f}s")
    t = time.perf_counter()
    stats = worker.process_shard(shard, os.path.join(work, "staging"))
    secs = time.perf_counter() - t
    # the same docs again as another shard: the actor is long-lived, so this is its steady state
    warm = dict(shard, shard_id="00001-check")
    t = time.perf_counter()
    warm_stats = worker.process_shard(warm, os.path.join(work, "staging"))
    warm_secs = time.perf_counter() - t
    out = os.path.join(work, "staging", "results", "00000-check")
    ents = storage.read_table_ipc(os.path.join(out, "entities.arrow"))
    embs = storage.read_table_ipc(os.path.join(out, "embeddings.arrow"))
    import numpy as np

    vecs = np.asarray(embs["embedding"].combine_chunks().flatten()).reshape(embs.num_rows, -1)
    norms = np.linalg.norm(vecs, axis=1)
    docs = {r["doc_id"]: r["text"] for r in rows}
    spans_ok = all(docs[e["doc_id"]][e["start"] : e["end"]] == e["text"] for e in ents.to_pylist())
    results["actor"] = {
        "device": worker.device,
        "setup_s": round(setup, 2),
        "process_shard_s": round(secs, 2),
        "docs": len(rows),
        "docs_per_s": round(len(rows) / secs, 1),
        "warm_process_shard_s": round(warm_secs, 2),
        "warm_processors_s": {k: round(v["seconds"], 2) for k, v in warm_stats["processors"].items()},
        "counts": stats["counts"],
        "processors_s": {k: round(v["seconds"], 2) for k, v in stats["processors"].items()},
        "embedding_norm_min_max": [float(norms.min()), float(norms.max())],
        "entity_spans_index_text": spans_ok,
    }
    say(f"actor path: {results['actor']}")
    assert worker.device == (a.device if a.device == "cuda" else "cpu")
    assert stats["counts"]["embeddings"] == len(rows) and spans_ok
    assert abs(norms - 1).max() < 1e-3


def oom_split(a, model_dir: str, texts: list[str], results: dict) -> None:  # noqa: ANN001
    import torch

    from xlmflow.ray_cluster.engine import Engine
    from xlmflow.ray_cluster.models import load_model
    from xlmflow.ray_cluster.processors.ner import predict_entities

    lm = load_model(model_dir, "ner")
    ref = predict_entities(Engine(lm, a.device, max_batch_tokens=a.max_batch_tokens), texts)
    handler = CountOOM()
    logging.getLogger("xlmflow.ray_cluster.engine").addHandler(handler)
    limit = None
    if a.device == "cuda":
        import gc

        gc.collect()
        torch.cuda.empty_cache()
        limit = torch.cuda.memory_allocated() + a.oom_headroom_gib * 2**30  # the models stay, plus headroom
        torch.cuda.set_per_process_memory_fraction(limit / torch.cuda.get_device_properties(0).total_memory)
    eng = Engine(lm, a.device, max_batch_tokens=a.oom_budget)
    t = time.perf_counter()
    got = predict_entities(eng, texts)
    secs = time.perf_counter() - t
    if a.device == "cuda":
        torch.cuda.set_per_process_memory_fraction(1.0)

    def key(doc: list[dict]) -> list[tuple]:
        return [(e["start"], e["end"], e["label"]) for e in doc]

    same_docs = sum(key(x) == key(y) for x, y in zip(ref, got, strict=True))
    results["oom"] = {
        "memory_limit_gib": round(limit / 2**30, 2) if limit else None,
        "max_batch_tokens": a.oom_budget,
        "oom_splits": handler.splits,
        "seconds": round(secs, 2),
        "docs_with_identical_entities": f"{same_docs}/{len(texts)}",
        "entities": [sum(map(len, ref)), sum(map(len, got))],
    }
    say(f"oom: {results['oom']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--docs", type=int, help="documents (default: all unique articles)")
    ap.add_argument("--max-batch-tokens", type=int, default=8192)
    ap.add_argument("--oom-budget", type=int, default=2_000_000, help="token budget meant to overflow")
    ap.add_argument(
        "--oom-headroom-gib", type=float, default=1.5, help="GPU memory allowed beyond the weights"
    )
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--workdir", default="/tmp/xlmflow-gpu-actor")
    ap.add_argument("--out-json")
    a = ap.parse_args()

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    results: dict = {
        "device": torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "argv": sys.argv,
    }
    os.makedirs(a.workdir, exist_ok=True)
    model_dir = os.path.join(a.workdir, "tiny" if a.tiny else "base")
    if not os.path.exists(os.path.join(model_dir, "config.json")):
        build_model(model_dir, a.tokenizer, a.tiny)
    texts = load_docs(a.corpus, a.docs)
    say(f"{results['device']}: {len(texts)} docs")
    try:
        actor_path(a, model_dir, texts, results)
        import gc

        gc.collect()  # drop the worker's models before the memory-limited part
        oom_split(a, model_dir, texts, results)
    finally:
        if a.out_json:
            with open(a.out_json, "w") as f:
                json.dump(results, f, indent=1)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
