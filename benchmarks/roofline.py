"""NER roofline: the engine's tokens/s as a share of this machine's fp32 GEMM ceiling on XLM-R-base's shapes.

Per token XLM-R-base runs 6 Linear GEMMs per layer (Q, K, V, attention output, FFN in, FFN out) plus the
classifier: FLOPs/token = 2 * sum(in*out). Each distinct shape is timed with both fp32 GEMMs PyTorch has
on CPU (F.linear = MKL, and oneDNN's prepacked linear) at M rows (tokens per batch), best of `--reps`
after a warm-up; ceiling tokens/s = 1 / sum_i(FLOP_i / best speed_i).
"GEMM replay" runs the fp32 engine's own Linear modules back to back over the same batches (its
`batches` of the windows, the per-token layers in the packed forward's row blocks) on random activations,
with no attention, LayerNorm or anything else between them: what the model's GEMMs alone sustain here,
between the burst the ceiling takes and the engine.
Attention scores, LayerNorm, GELU, embeddings, tokenization and aggregation are extra, so the ceiling is
an upper bound (int8 variants are compared with the same fp32 ceiling).
Model: XLM-R-base shaped, random weights, real XLM-R tokenizer, 9 NER labels; documents: UDHR articles
(`--corpus`, one article per line). Rounds alternate a ceiling measurement and one
`predict_entities` per variant (forward x precision), so load from other jobs falls on both; "forward"
is its `window_probs` phase (engine.run over the windows) alone.

    .venv/bin/python benchmarks/roofline.py --corpus ARTICLES.jsonl --docs 120 --rounds 5 --threads 2
"""

from __future__ import annotations

import os
import random
import shlex
import statistics
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks.common import engine_parser, read_corpus  # noqa: E402
from benchmarks.report import cpu_name, emit  # noqa: E402


def build_model(out: str) -> str:
    from xlmflow.ray_cluster.models import BASE_SHAPE, make_tiny_xlmr
    from xlmflow.ray_cluster.processors.ner import NerProcessor

    cfg = {**BASE_SHAPE, **NerProcessor.tiny_config()}  # the tiny NER labels, at XLM-R-base shape
    return make_tiny_xlmr("ner", NerProcessor.model_class, out, 0, cfg)


def gemm_shapes(cfg) -> dict[tuple[int, int], int]:  # noqa: ANN001 - a transformers config
    """(in, out) -> GEMMs of that shape per token."""
    h, f, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    return {(h, h): 4 * n, (h, f): n, (f, h): n, (h, cfg.num_labels): 1}


def gemm_speeds(shapes, rows: list[int], reps: int) -> dict[tuple[int, int, int, str], float]:  # noqa: ANN001
    """FLOP/s per (M, in, out, kernel), best of `reps` after one warm-up, for both fp32 GEMMs PyTorch
    has on CPU: F.linear (x @ W.T + b, MKL) and oneDNN's prepacked linear (what the engine runs)."""
    import torch
    import torch.nn.functional as F

    from xlmflow.ray_cluster import onednn

    speeds = {}
    with torch.inference_mode():
        for m in rows:
            for k, n in shapes:
                x, w, b = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
                kernels = {"F.linear": lambda x=x, w=w, b=b: F.linear(x, w, b)}
                if onednn.available():
                    wp = torch.ops.mkldnn._reorder_linear_weight(w, None)
                    kernels["oneDNN"] = lambda x=x, wp=wp, b=b: torch.ops.mkldnn._linear_pointwise(
                        x, wp, b, "none", [], ""
                    )
                for name, fn in kernels.items():
                    fn()
                    best = float("inf")
                    for _ in range(reps):
                        t0 = time.perf_counter()
                        fn()
                        best = min(best, time.perf_counter() - t0)
                    speeds[(m, k, n, name)] = 2 * m * k * n / best
    return speeds


def ceiling(shapes, speeds) -> float:  # noqa: ANN001
    """Tokens/s if every GEMM ran at its best measured speed (over M and kernels)."""
    best = {s: max(v for (_, k, n, _), v in speeds.items() if (k, n) == s) for s in shapes}
    return 1 / sum(c * 2 * k * n / best[(k, n)] for (k, n), c in shapes.items())


def gemm_replay(eng, texts: list[str]) -> float:  # noqa: ANN001 - an fp32 packed Engine
    """Seconds for the engine's Linear modules alone over the batches its forward would run."""
    import torch

    from xlmflow.ray_cluster import packed

    base = eng.model.base_model
    docs = eng.tokenize(texts)
    lengths = [len(w.input_ids) for w in eng.windows(docs)]
    hidden = eng.model.config.hidden_size
    t0 = time.perf_counter()
    with torch.inference_mode():
        for rows in eng.batches(lengths):
            x = torch.randn(sum(lengths[i] for i in rows), hidden)
            for layer in base.encoder.layer:
                sa, so = layer.attention.self, layer.attention.output
                sa.query(x), sa.key(x), sa.value(x)
                x = torch.cat(
                    [layer.output.dense(layer.intermediate(so.dense(c))) for c in x.split(packed.TOKEN_ROWS)]
                )
            eng.model.classifier(x)
    return time.perf_counter() - t0


def run_engine(eng, texts: list[str]) -> tuple[float, float]:  # noqa: ANN001
    """Seconds of predict_entities (its three phases) and of its forward phase alone."""
    from xlmflow.ray_cluster.processors.ner import finish_entities, tokens_and_windows, window_probs

    t0 = time.perf_counter()
    docs, wins = tokens_and_windows(eng, texts)
    t1 = time.perf_counter()
    scores = window_probs(eng, wins)
    t2 = time.perf_counter()
    finish_entities(eng, texts, docs, wins, scores, "simple")
    return time.perf_counter() - t0, t2 - t1


# long: the benchmark's steps in the order they run, read in one place
def main() -> None:
    ap = engine_parser(__doc__, docs=120)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--forward", nargs="+", default=["auto"], choices=["auto", "packed", "padded"])
    ap.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "int8"])
    ap.add_argument("--rows", type=int, nargs="+", default=[2048, 8192], help="M of the ceiling GEMMs")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per GEMM shape")
    ap.add_argument("--out", help="markdown file to write (default: print)")
    a = ap.parse_args()

    import torch
    import transformers

    from xlmflow.ray_cluster.engine import Engine
    from xlmflow.ray_cluster.models import load_model
    from xlmflow.ray_cluster.processors.ner import predict_entities

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(a.threads)
    texts = [r["text"] for r in random.Random(0).sample(read_corpus(a.corpus), a.docs)]

    engines = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = build_model(tmp)
        lms = {p: load_model(path, "ner") for p in a.precision}  # int8 quantizes its model in place
    for p in a.precision:
        for fw in a.forward:
            kw = {"max_batch_tokens": a.max_batch_tokens, "stride": a.stride, "forward": fw}
            eng = Engine(lms[p], "cpu", cpu_precision=p, **kw)
            predict_entities(eng, texts[:4], "simple")  # warm-up
            engines[f"{fw}->{eng.forward_path} {p}"] = eng
    eng0 = next(iter(engines.values()))
    cfg = eng0.model.config
    shapes = gemm_shapes(cfg)
    flops = sum(c * 2 * k * n for (k, n), c in shapes.items())
    docs = eng0.tokenize(texts)
    n_tokens = sum(len(d.ids) for d in docs)
    n_window = sum(len(w.input_ids) for w in eng0.windows(docs))

    replay = next((e for e in engines.values() if e.forward_path == "packed" and e.precision == "fp32"), None)
    rounds = []  # (ceiling tokens/s, speeds, {variant: (seconds, forward seconds)})
    for r in range(a.rounds):
        speeds = gemm_speeds(shapes, a.rows, a.reps)
        ceil = ceiling(shapes, speeds)
        times = {name: run_engine(eng, texts) for name, eng in engines.items()}
        if replay is not None:
            s = gemm_replay(replay, texts)
            times["GEMM replay (fp32 Linears alone)"] = (s, s)
        rounds.append((ceil, speeds, times))
        msg = ", ".join(f"{k} {n_tokens / s:.0f}" for k, (s, _) in times.items())
        print(f"round {r + 1}/{a.rounds}: ceiling {ceil:.0f} tok/s, {msg}", file=sys.stderr)

    cpu = cpu_name()
    med = statistics.median
    out = [
        "# NER roofline (CPU, fp32 GEMM ceiling)",
        "",
        f"    {shlex.join(sys.orig_argv)}",
        "",
        f"- machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, threads {a.threads}",
        f"- model: hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, FFN {cfg.intermediate_size}, "
        f"{cfg.num_labels} labels; Linear FLOPs/token = {flops:,} ({flops / 1e6:.1f} MFLOP)",
        f"- {a.docs} UDHR articles, {n_tokens} content tokens ({n_window} window tokens with specials and "
        f"stride overlap), max_batch_tokens {a.max_batch_tokens}, stride {a.stride}",
        f"- ceiling: F.linear (MKL) and oneDNN's prepacked linear at M in {a.rows}, best of {a.reps} per "
        "shape and kernel, best M and kernel per shape",
        "",
        "| round | variant | engine tok/s | forward tok/s | ceiling tok/s | share | forward share |",
        "|---|---|---|---|---|---|---|",
    ]
    for r, (c, _, times) in enumerate(rounds, 1):
        for name, (s, fs) in times.items():
            e, fw = n_tokens / s, n_tokens / fs
            out.append(f"| {r} | {name} | {e:.0f} | {fw:.0f} | {c:.0f} | {e / c:.1%} | {fw / c:.1%} |")
    out += [
        "\nMedians over rounds (share = median of the per-round shares):\n",
        "| variant | engine tok/s | forward tok/s | ceiling tok/s | share | forward share | forward/total time |",
        "|---|---|---|---|---|---|---|",
    ]
    ceils = [c for c, _, _ in rounds]
    for name in rounds[0][2]:
        s = [t[name][0] for _, _, t in rounds]
        fs = [t[name][1] for _, _, t in rounds]
        share = med(n_tokens / x / c for x, c in zip(s, ceils, strict=True))
        fshare = med(n_tokens / x / c for x, c in zip(fs, ceils, strict=True))
        ratio = med(f / x for f, x in zip(fs, s, strict=True))
        out.append(
            f"| {name} | {n_tokens / med(s):.0f} | {n_tokens / med(fs):.0f} | {med(ceils):.0f} "
            f"| {share:.1%} | {fshare:.1%} | {ratio:.0%} |"
        )
    out += ["\nGEMM GFLOP/s per shape (median over rounds of the best rep):\n"]
    kernels = sorted({kn for (_, _, _, kn) in rounds[0][1]})
    out += ["| in -> out | per token | kernel | " + " | ".join(f"M={m}" for m in a.rows) + " |"]
    out += ["|---|---|---|" + "---|" * len(a.rows)]
    for (k, n), c in shapes.items():
        for kn in kernels:
            cells = " | ".join(f"{med(sp[(m, k, n, kn)] for _, sp, _ in rounds) / 1e9:.0f}" for m in a.rows)
            out.append(f"| {k} -> {n} | {c} | {kn} | {cells} |")
    emit(out, a.out)


if __name__ == "__main__":
    main()
