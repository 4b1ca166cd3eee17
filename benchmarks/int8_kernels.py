"""int8 vs fp32 on this CPU: the GEMM kernels alone, then a whole packed forward with each int8 kernel.

Part 1, kernels. Per XLM-R-base Linear shape, at M rows, alternating rounds of: the fp32 kernel the
engine runs (oneDNN's prepacked linear), `F.linear` (MKL), the int8 kernel `--cpu-precision int8` runs
(`xlmflow.ray_cluster.quantize`: fbgemm's dynamic int8 GEMM, activation quantization included) and, when
`onnxruntime` and `onnx` are importable, ONNX Runtime's fp32 MatMul+Add and its fused dynamic int8
`DynamicQuantizeMatMul` (the kernel its `quantize_dynamic` produces) as one-node graphs with the same
weights. Each timing is the mean of `--reps` calls after a warm-up; medians over rounds, and each
kernel's ratio to oneDNN fp32. A forward can be no faster, relative to fp32, than its GEMMs are.

Part 2, forward (`--forward`): the packed forward (`xlmflow.ray_cluster.packed`) over one batch of UDHR articles
(up to 8,192 tokens) on an XLM-R-base-shaped random-weight NER model with its Linears on oneDNN fp32,
on our fbgemm int8 modules, and (with onnxruntime) on modules that call one ONNX Runtime session per
Linear (7-bit weights, as ONNX Runtime advises for CPUs without VNNI); alternating rounds, medians.

    .venv/bin/python benchmarks/int8_kernels.py --rounds 11 --threads 2 --forward 5 --corpus ARTICLES.jsonl
(onnxruntime and onnx are not dependencies: `pip install onnxruntime onnx` into the venv to include them)
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import statistics
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks.common import ARTICLES_HELP, read_corpus  # noqa: E402
from benchmarks.report import cpu_name, emit  # noqa: E402

# per layer: Q, K, V and the attention output; FFN in; FFN out
SHAPES = {(768, 768): 4, (768, 3072): 1, (3072, 768): 1}


def ort_session(w, b, threads: int, int8: bool, wmax: int = 127):  # noqa: ANN001, ANN201 - numpy [in, out], [out]
    """A one-node ONNX Runtime session computing x @ w + b: fp32 MatMul+Add, or DynamicQuantizeMatMul
    with per-column int8 weights in [-wmax, wmax]; None without onnxruntime/onnx."""
    try:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    k, n = w.shape
    if int8:
        scale = (np.abs(w).max(axis=0) / wmax).clip(min=1e-12).astype(np.float32)
        wq = np.clip(np.round(w / scale), -wmax, wmax).astype(np.int8)
        named = ((wq, "Wq"), (scale, "s"), (np.zeros(n, np.int8), "z"), (b, "b"))
        nodes = [
            helper.make_node(
                "DynamicQuantizeMatMul", ["Xin", "Wq", "s", "z", "b"], ["Y"], domain="com.microsoft"
            )
        ]
    else:
        named = ((w, "W"), (b, "b"))
        nodes = [helper.make_node("MatMul", ["Xin", "W"], ["T"]), helper.make_node("Add", ["T", "b"], ["Y"])]
    graph = helper.make_graph(
        nodes, "linear", [helper.make_tensor_value_info("Xin", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
        [numpy_helper.from_array(np.ascontiguousarray(a), nm) for a, nm in named],
    )  # fmt: skip
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    # its pool's threads would otherwise spin after each run and slow the torch kernel that runs next
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    model = helper.make_model(graph, opset_imports=opsets).SerializeToString()
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def kernels_for(k: int, n: int, threads: int) -> dict:
    import torch

    from xlmflow.ray_cluster import onednn, quantize

    lin = torch.nn.Linear(k, n)
    w, b = lin.weight.detach(), lin.bias.detach()
    out = {
        "oneDNN fp32": onednn._dnnl_linear_class()(lin),
        "F.linear fp32": lambda x: torch.nn.functional.linear(x, w, b),
        "fbgemm int8 (ours)": quantize._int8_linear_class()(lin),
    }
    for name, int8 in (("ORT fp32", False), ("ORT int8", True)):
        sess = ort_session(w.numpy().T, b.numpy(), threads, int8)
        if sess is not None:
            out[name] = lambda x, sess=sess: sess.run(None, {"Xin": x.numpy()})
    return out


def ort_linears(model, threads: int):  # noqa: ANN001, ANN201 - a torch model, changed in place
    """Every nn.Linear of `model` replaced by a module calling its own ONNX Runtime int8 session."""
    import torch

    class OrtInt8Linear(torch.nn.Module):
        def __init__(self, lin: torch.nn.Linear) -> None:
            super().__init__()
            w, b = lin.weight.detach().float().numpy().T, lin.bias.detach().float().numpy()
            self.sess, self.k, self.n = (
                ort_session(w, b, threads, True, wmax=63),
                lin.in_features,
                lin.out_features,
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.sess.run(None, {"Xin": x.reshape(-1, self.k).contiguous().numpy()})[0]
            return torch.from_numpy(y).view(*x.shape[:-1], self.n)

    targets = [
        (p, nm, c) for p in model.modules() for nm, c in p.named_children() if type(c) is torch.nn.Linear
    ]
    for parent, name, child in targets:
        setattr(parent, name, OrtInt8Linear(child))
    return model


def forward_rounds(rounds: int, threads: int, corpus: str) -> tuple[list[str], dict]:
    """Part 2: tokens/s per Linear backend, per round, of the packed forward over one UDHR batch."""
    import numpy as np
    import torch
    import transformers

    from benchmarks.roofline import build_model
    from xlmflow.ray_cluster import onednn, packed, quantize
    from xlmflow.ray_cluster.engine import twin
    from xlmflow.ray_cluster.models import load_model

    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        lm = load_model(build_model(tmp), "ner")
    texts = [r["text"] for r in read_corpus(corpus)]
    random.Random(0).shuffle(texts)
    lengths: list[int] = []
    ids: list[int] = []
    for t in texts:
        piece = lm.tokenizer(t)["input_ids"][:512]
        if sum(lengths) + len(piece) > 8192:
            break
        lengths.append(len(piece))
        ids += piece
    models = {
        "fp32 oneDNN": onednn.pack_linears(twin(lm.model)),
        "int8 fbgemm (ours)": quantize.quantize_linears(twin(lm.model)),
    }
    if ort_session(np.zeros((1, 1), np.float32), np.zeros(1, np.float32), 1, True) is not None:
        models["int8 ORT session per Linear"] = ort_linears(twin(lm.model), threads)
    x = torch.tensor(ids)
    speeds: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        ref = packed.forward(models["fp32 oneDNN"], x, lengths).logits.argmax(-1)
        agree = {
            name: float((packed.forward(m, x, lengths).logits.argmax(-1) == ref).float().mean())
            for name, m in models.items()
        }
        for r in range(rounds):
            for name, m in models.items():
                t0 = time.perf_counter()
                packed.forward(m, x, lengths)
                speeds[name].append(len(ids) / (time.perf_counter() - t0))
            print(f"forward round {r + 1}/{rounds} done", file=sys.stderr)
    med = statistics.median
    base = med(speeds["fp32 oneDNN"])
    out = [
        "",
        f"## Packed forward, one batch of {len(lengths)} UDHR articles ({len(ids)} tokens), {rounds} rounds",
        "",
        "| Linear backend | tokens/s (median) | per round | vs fp32 | token labels = fp32 |",
        "|---|---|---|---|---|",
    ]
    for name, v in speeds.items():
        out.append(
            f"| {name} | {med(v):.0f} | {', '.join(f'{s:.0f}' for s in v)} | {med(v) / base:.2f}x | {agree[name]:.2%} |"
        )
    return out


# long: the benchmark's steps in the order they run, read in one place
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", metavar="JSONL", help=f"part 2's texts: {ARTICLES_HELP}")
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--forward", type=int, default=0, metavar="ROUNDS", help="also part 2, with this many rounds"
    )
    ap.add_argument("--out", help="markdown file to write (default: print)")
    a = ap.parse_args()
    if a.forward and not a.corpus:
        ap.error("--forward needs --corpus ARTICLES.jsonl")

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    speeds: dict[tuple, list[float]] = {}
    kernels = {}
    for k, n in SHAPES:
        x = torch.randn(a.rows, k)
        kernels[(k, n)] = [(name, fn, x) for name, fn in kernels_for(k, n, a.threads).items()]
    with torch.inference_mode():
        for r in range(a.rounds):
            for (k, n), ks in kernels.items():
                for name, fn, x in ks:
                    fn(x)
                    t0 = time.perf_counter()
                    for _ in range(a.reps):
                        fn(x)
                    flop = 2 * a.rows * k * n * a.reps
                    speeds.setdefault((k, n, name), []).append(flop / (time.perf_counter() - t0))
            print(f"kernel round {r + 1}/{a.rounds} done", file=sys.stderr)

    cpu = cpu_name()
    with open("/proc/cpuinfo") as f:
        flags = next((ln for ln in f if ln.startswith("flags")), "").strip() + " "
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f" {f} " in flags]
    med = statistics.median
    names = [name for name, _, _ in next(iter(kernels.values()))]
    out = [
        "# int8 vs fp32 on this CPU: GEMM kernels, and a packed forward with each int8 kernel",
        "",
        f"    {shlex.join(sys.orig_argv)}",
        "",
        f"- machine: {cpu}, {os.cpu_count()} cores ({', '.join(isa)}), torch {torch.__version__}, threads {a.threads}",
        f"- kernels: M = {a.rows} rows, mean of {a.reps} calls per timing, medians of {a.rounds} alternating"
        " rounds; int8 timings include quantizing the activations",
        "",
        "| in -> out | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for k, n in SHAPES:
        ref = med(speeds[(k, n, "oneDNN fp32")])
        cells = [
            f"{med(speeds[(k, n, nm)]) / 1e9:.0f} ({med(speeds[(k, n, nm)]) / ref:.2f}x)" for nm in names
        ]
        out.append(f"| {k} -> {n} | " + " | ".join(cells) + " |")

    def layer_seconds(nm: str) -> float:  # one layer's GEMMs per token, at this kernel's speeds
        return sum(c * 2 * k * n / med(speeds[(k, n, nm)]) for (k, n), c in SHAPES.items())

    ratios = [f"{layer_seconds('oneDNN fp32') / layer_seconds(nm):.2f}x" for nm in names]
    out.append("| a layer's mix (4 + 1 + 1) | " + " | ".join(ratios) + " |")
    out += [
        "",
        "GFLOP/s (GOP/s for int8) and, in brackets, the ratio to oneDNN fp32 (the engine's fp32 kernel); the"
        " last row weighs the shapes as an XLM-R layer runs them.",
    ]
    if a.forward:
        out += forward_rounds(a.forward, a.threads, a.corpus)
    emit(out, a.out)


if __name__ == "__main__":
    main()
