"""int8 vs fp32 on CPU (`--cpu-precision int8`): speed and agreement for the ner, embed and qe models.

Checkpoints: each processor's tiny model (`tiny_config`, `tiny_init`) at XLM-R-base's shape (BASE_SHAPE),
random weights, real XLM-R tokenizer. Both precisions run one loaded model (the int8 engine quantizes a
copy), forward="auto", same torch threads. Texts: UDHR articles (`--corpus`).
- ner: 9 labels, classifier sharpened as NerProcessor.tiny_init does (tokens are not all "O").
  Token agreement = share of content tokens whose argmax label equals fp32's; entity F1 = int8's
  entities against fp32's, exact match on (doc, start, end, label). `predict_entities` (its three phases)
  runs fp32/int8 in each of `--rounds` rounds, order alternating; tokens/s = content tokens / seconds.
- embed: `embed_texts` (mean pooling), same articles: cosine(int8, fp32) per document; one round.
- qe: one-output cross-encoder, `score_pairs` on (English article, same article in another language)
  pairs (qe_throughput.load_pairs): |score int8 - score fp32|; one round.
Random weights make agreement a proxy: a trained model's label margins and score scales differ.

    .venv/bin/python benchmarks/int8_agreement.py --corpus ARTICLES.jsonl --docs 120 --pairs 120 --rounds 3 --threads 2 --out int8.md
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import shlex
import sys
import tempfile
import time
import warnings
from statistics import median

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks.common import engine_parser, read_corpus  # noqa: E402
from benchmarks.report import cpu_name, emit  # noqa: E402

PRECISIONS = ("fp32", "int8")
KINDS = ("ner", "embed", "qe")


def engines(kind: str, tmp: str, a: argparse.Namespace) -> dict:
    """A base-shaped checkpoint of processor `kind`, loaded once, and an Engine per precision."""
    from xlmflow.ray_cluster.engine import Engine
    from xlmflow.ray_cluster.models import BASE_SHAPE, load_model, make_tiny_xlmr
    from xlmflow.ray_cluster.processors.embed import EmbedProcessor
    from xlmflow.ray_cluster.processors.ner import NerProcessor
    from xlmflow.ray_cluster.processors.qe import QeProcessor

    proc = {"ner": NerProcessor, "embed": EmbedProcessor, "qe": QeProcessor}[kind]
    cfg = {**BASE_SHAPE, **proc.tiny_config()}
    path = make_tiny_xlmr(kind, proc.model_class, os.path.join(tmp, kind), 0, cfg, proc.tiny_init)
    lm = load_model(path, kind)
    kw = {"max_batch_tokens": a.max_batch_tokens, "stride": a.stride, "forward": "auto"}
    return {p: Engine(lm, "cpu", cpu_precision=p, **kw) for p in PRECISIONS}


def alternate(engs: dict, fn, items: list, rounds: int, kind: str) -> tuple[dict, dict]:  # noqa: ANN001
    """fn(engine, items) per precision in each round, order alternating, after a warm-up (allocator,
    kernels) on 4 items; seconds per round and the last outputs, per precision."""
    for eng in engs.values():
        fn(eng, items[:4])
    secs, outs = {p: [] for p in engs}, {}
    for r in range(rounds):
        for p in PRECISIONS if r % 2 == 0 else PRECISIONS[::-1]:
            t0 = time.perf_counter()
            outs[p] = fn(engs[p], items)
            secs[p].append(time.perf_counter() - t0)
        msg = ", ".join(f"{p} {secs[p][-1]:.1f}s" for p in PRECISIONS)
        print(f"{kind} round {r + 1}/{rounds}: {msg}", file=sys.stderr, flush=True)
    return secs, outs


def speed_row(kind: str, engs: dict, secs: dict, tokens: int) -> str:
    f, q = secs["fp32"], secs["int8"]
    ratios = [x / y for x, y in zip(f, q, strict=True)]  # int8 tok/s / fp32 tok/s, per round
    ran = ", ".join("{precision} {forward}".format(**e.describe()) for e in engs.values())
    speeds = f"{tokens / median(f):.0f} | {tokens / median(q):.0f} | {median(ratios):.2f}x"
    return f"| {kind} ({ran}) | {len(f)} | {tokens} | {speeds} | {', '.join(f'{x:.2f}' for x in ratios)} |"


def run_ner(engs: dict, texts: list[str], rounds: int) -> tuple[str, str]:
    import numpy as np

    from xlmflow.ray_cluster.processors.ner import finish_entities, tokens_and_windows, window_probs

    def fn(eng, texts):  # noqa: ANN001, ANN202 - predict_entities, keeping the window scores
        docs, wins = tokens_and_windows(eng, texts)
        scores = window_probs(eng, wins)
        return docs, wins, scores, finish_entities(eng, texts, docs, wins, scores, "simple")

    secs, outs = alternate(engs, fn, texts, rounds, "ner")
    labels, ents = {}, {}
    for p, (docs, wins, scores, doc_ents) in outs.items():
        lab = [np.zeros(len(d.ids), dtype=np.int64) for d in docs]
        for w, s in zip(wins, scores, strict=True):  # each token from the window that owns it
            lab[w.doc][w.own_start : w.own_end] = s[w.own_slice()].argmax(1)
        labels[p] = np.concatenate(lab)
        ents[p] = {(i, e["start"], e["end"], e["label"]) for i, d in enumerate(doc_ents) for e in d}
    ref, got = ents["fp32"], ents["int8"]
    same = len(ref & got)
    f1 = 2 * same / (len(ref) + len(got)) if ref or got else 1.0
    n, agree = len(labels["fp32"]), float((labels["fp32"] == labels["int8"]).mean())
    o_share = float((labels["fp32"] == engs["fp32"].config.label2id.get("O", 0)).mean())
    row = (
        f'| ner | token labels: {agree:.2%} agree ({n} content tokens; fp32 labels {o_share:.0%} "O"); '
        f"entity F1 {f1:.3f} (fp32 {len(ref)}, int8 {len(got)} entities, {same} exact matches) |"
    )
    return speed_row("ner", engs, secs, n), row


def run_embed(engs: dict, texts: list[str], rounds: int) -> tuple[str, str]:
    import numpy as np

    from xlmflow.ray_cluster.processors.embed import embed_texts

    secs, vecs = alternate(engs, embed_texts, texts, rounds, "embed")
    cos = (vecs["fp32"] * vecs["int8"]).sum(1)  # both L2-normalised
    n = sum(len(d.ids) for d in engs["fp32"].tokenize(texts))
    row = f"| embed | cosine(int8, fp32) per document: min {cos.min():.5f}, median {np.median(cos):.5f} |"
    return speed_row("embed", engs, secs, n), row


def run_qe(engs: dict, pairs: list[tuple[str, str]], rounds: int) -> tuple[str, str]:
    import numpy as np

    from xlmflow.ray_cluster.processors.qe import score_pairs

    def fn(eng, ps):  # noqa: ANN001, ANN202
        return score_pairs(eng, *zip(*ps, strict=True))[0]

    secs, outs = alternate(engs, fn, pairs, rounds, "qe")
    ref = np.array(outs["fp32"])
    d = np.abs(np.array(outs["int8"]) - ref)
    enc = engs["fp32"].encode_pairs(*zip(*pairs, strict=True))
    n, cut = sum(len(p.input_ids) for p in enc), sum(p.truncated for p in enc)
    row = (
        f"| qe | score abs(int8 - fp32): max {d.max():.4f}, mean {d.mean():.4f} (fp32 scores "
        f"{ref.min():.3f}..{ref.max():.3f}, std {ref.std():.4f}; {len(pairs)} pairs, {cut} truncated) |"
    )
    return speed_row("qe", engs, secs, n), row


def main() -> None:
    ap = engine_parser(__doc__, docs=120)  # --docs: UDHR articles for ner and embed
    ap.add_argument("--pairs", type=int, default=120, help="src/mt pairs for qe")
    ap.add_argument("--rounds", type=int, default=3, help="alternating fp32/int8 rounds of ner")
    ap.add_argument("--tasks", default=",".join(KINDS), help="comma-separated subset of ner,embed,qe")
    ap.add_argument("--out", help="markdown file to write (default: print)")
    a = ap.parse_args()
    tasks = [t.strip() for t in a.tasks.split(",")]
    if bad := set(tasks) - set(KINDS):
        ap.error(f"--tasks: unknown {sorted(bad)}; choose from {', '.join(KINDS)}")

    import torch
    import transformers

    from benchmarks.qe_throughput import load_pairs

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(a.threads)
    recs = random.Random(0).sample(read_corpus(a.corpus), a.docs)
    texts = [r["text"] for r in recs]
    pairs = load_pairs(a.pairs, a.corpus)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in tasks:
            t0 = time.perf_counter()
            engs = engines(kind, tmp, a)
            print(f"{kind}: built and loaded in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
            run = {"ner": run_ner, "embed": run_embed, "qe": run_qe}[kind]
            rows.append(run(engs, pairs if kind == "qe" else texts, a.rounds if kind == "ner" else 1))
            del engs  # one base-shaped model (and its int8 copy) in memory at a time
            gc.collect()

    cpu = cpu_name()
    out = [
        "# int8 vs fp32 on CPU: speed and agreement",
        "",
        f"    {shlex.join(sys.orig_argv)}",
        "",
        f"- machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, threads {a.threads}",
        "- models: XLM-R-base shaped (hidden 768, 12 layers, FFN 3072), random weights, real XLM-R "
        "tokenizer; int8 = every Linear int8 (ray_cluster.quantize)",
        f"- ner/embed: {a.docs} UDHR articles in {len({r['lang'] for r in recs})} languages; qe: "
        f"{len(pairs)} pairs (an English article, the same article in another language); "
        f"max_batch_tokens {a.max_batch_tokens}, stride {a.stride}",
        "- agreement is a proxy: random weights (ner classifier sharpened as NerProcessor.tiny_init), so "
        "label margins and score scales are not those of trained checkpoints",
        "",
        "| task (engines) | rounds | tokens | fp32 tok/s | int8 tok/s | int8/fp32 | per round |",
        "|---|---|---|---|---|---|---|",
        *(s for s, _ in rows),
        "",
        "tok/s: medians over rounds; int8/fp32: median of per-round ratios; qe tokens include specials",
        "",
        "| task | agreement with fp32 |",
        "|---|---|",
        *(g for _, g in rows),
    ]
    emit(out, a.out)


if __name__ == "__main__":
    main()
