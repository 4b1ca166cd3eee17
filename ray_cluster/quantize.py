"""int8 Linear layers for CPU actors (`--cpu-precision int8`): dynamic quantization, our own module.

Every `nn.Linear` of the model becomes an `Int8Linear`: weights quantized once, per output channel,
symmetric int8; activations quantized per call (one scale for the batch, asymmetric, 7 bits: on CPUs
without VNNI the u8*s8 pair sums of the int8 kernel saturate int16 with 8-bit activations — measured
max error 9.5% vs 1.9% on a 768x3072 layer); the matmul is oneDNN's int8 GEMM
(`torch.ops.onednn.qlinear_*`, the kernels torch's x86 int8 inductor path lowers to), accumulating in
int32 and returning fp32. Embeddings, LayerNorm, GELU and attention stay fp32.

Why this path: `torch.ao.quantization.quantize_dynamic` is deprecated, and so are the quantized tensors
(`torch.quantize_per_channel`, qint8) its fbgemm kernels take; torchao's int8 dynamic quantization runs
`torch._int_mm`, which on CPU in eager mode measured 25x *slower* than fp32 here (2 cores, AVX2); ONNX
Runtime needs a 1 GB export and a quantization pass per checkpoint and runs the padded graph only. The
oneDNN ops take plain int8/uint8 tensors, measured 1.9-2.3x a fp32 GEMM on these CPUs, and compose with
the packed forward (ray_cluster.packed). Outputs are close to fp32, not equal: BENCHMARKS.md has the
agreement figures.
"""

from __future__ import annotations

from typing import Any

LEVELS = 127  # activation levels (7 bits), see above


def _int8_linear_class() -> type:
    import torch

    class Int8Linear(torch.nn.Module):
        """y = x W^T + b with W in int8 (per-channel scales) and x quantized per call."""

        def __init__(self, linear: torch.nn.Linear) -> None:
            super().__init__()
            w = linear.weight.detach().float()
            self.w_scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
            w8 = torch.round(w / self.w_scale[:, None]).clamp(-127, 127).to(torch.int8)
            self.w_zero = torch.zeros(w.shape[0], dtype=torch.long)
            self.packed = torch.ops.onednn.qlinear_prepack(w8, None)
            self.bias = None if linear.bias is None else linear.bias.detach().float()
            self.in_features, self.out_features = linear.in_features, linear.out_features

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x2 = x.reshape(-1, self.in_features).float()
            lo, hi = torch.aminmax(x2)
            lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
            scale = (hi - lo) / LEVELS or 1.0
            zero = int(round(-lo / scale))
            xq = torch.round(x2 / scale + zero).clamp_(0, LEVELS).to(torch.uint8)
            y = torch.ops.onednn.qlinear_pointwise(
                xq, scale, zero, self.packed, self.w_scale, self.w_zero, self.bias,
                1.0, 0, torch.float32, "none", [], "",
            )  # fmt: skip
            return y.view(*x.shape[:-1], self.out_features)

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.out_features}, int8"

    return Int8Linear


def quantize_linears(model: Any) -> Any:
    """Replace every nn.Linear of `model` (in place) with an int8 one; returns the model."""
    import torch

    int8 = _int8_linear_class()
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, torch.nn.Linear)
    ]
    for parent, name, child in targets:
        setattr(parent, name, int8(child))
    return model


def count_int8(model: Any) -> int:
    """How many int8 Linear layers the model has (what tests and the manifest check)."""
    return sum(type(m).__name__ == "Int8Linear" for m in model.modules())
