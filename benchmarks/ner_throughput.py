"""NER throughput: our engine vs transformers' token-classification pipeline, same model, same docs, one run.

The model is XLM-R-base shaped (hidden 768, 12 layers, 12 heads, random weights) with the real XLM-R
tokenizer and a 9-label token-classification head; the documents are UDHR articles in many languages.
Both sides see every token (the pipeline gets the same `stride`, so long articles are windowed too) and
the same torch thread count. Throughput = content tokens of the documents / wall seconds.

    .venv/bin/python benchmarks/ner_throughput.py --corpus ARTICLES.jsonl --docs 200 --threads 2
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import engine_parser, read_corpus, xlmr_base  # noqa: E402


def build_base_model(out: str) -> str:
    """The NER model: XLM-R-base shape, the tiny models' 9 token labels."""
    from xlmflow.ray_cluster.models import TINY_NER_LABELS

    labels = {
        "id2label": dict(enumerate(TINY_NER_LABELS)),
        "label2id": {x: i for i, x in enumerate(TINY_NER_LABELS)},
    }
    return xlmr_base(out, "XLMRobertaForTokenClassification", labels)


def main() -> None:
    a = engine_parser(__doc__, docs=200).parse_args()

    import torch
    import transformers

    from xlmflow.ray_cluster.engine import Engine
    from xlmflow.ray_cluster.models import load_model
    from xlmflow.ray_cluster.processors.ner import predict_entities

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(a.threads)
    docs = random.Random(0).sample(read_corpus(a.corpus), a.docs)
    texts = [r["text"] for r in docs]

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        lm = load_model(build_base_model(tmp), "ner")
        print(f"built and loaded the base-shaped model in {time.perf_counter() - t0:.1f}s")
        eng = Engine(lm, "cpu", max_batch_tokens=a.max_batch_tokens, stride=a.stride)
        n_tokens = sum(len(d.ids) for d in eng.tokenize(texts))
        pipe = transformers.pipeline(
            "token-classification",
            model=lm.model,
            tokenizer=lm.tokenizer,
            aggregation_strategy="simple",
            stride=a.stride,
            batch_size=16,
            device="cpu",
        )
        # warm up both paths (allocator, kernels) on a few docs outside the timing
        pipe(texts[:4])
        predict_entities(eng, texts[:4])

        t0 = time.perf_counter()
        with torch.inference_mode():
            hf = pipe(texts)
        hf_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ours = predict_entities(eng, texts, "simple")
        our_s = time.perf_counter() - t0

    langs = len({r["lang"] for r in docs})
    print(f"{a.docs} docs, {langs} languages, {n_tokens} content tokens, torch threads {a.threads}")
    print(f"HF pipeline (batch_size=16, stride={a.stride}): {hf_s:.1f}s  {n_tokens / hf_s:.0f} tokens/s")
    print(
        f"xlmflow engine (max_batch_tokens={a.max_batch_tokens}): {our_s:.1f}s  {n_tokens / our_s:.0f} tokens/s"
    )
    print(f"ratio engine/pipeline: {hf_s / our_s:.2f}x")
    print(f"entities: pipeline {sum(map(len, hf))}, engine {sum(map(len, ours))}")


if __name__ == "__main__":
    main()
