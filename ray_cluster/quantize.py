"""int8 Linear layers for CPU actors (`--cpu-precision int8`): dynamic quantization, our own module.

Every `nn.Linear` of the model becomes an `Int8Linear`: weights quantized once, per output channel,
symmetric int8; activations quantized per batch at run time; the matmul is PyTorch's fbgemm/x86 int8
kernel (`torch.ops.quantized.linear_dynamic`), which accumulates in int32 and returns fp32. Embeddings,
LayerNorm, GELU and attention stay fp32.

Why this path: `torch.ao.quantization.quantize_dynamic` is deprecated; torchao's int8 dynamic
quantization runs `torch._int_mm`, which on CPU in eager mode measured 25x *slower* than fp32 here
(2 cores, AVX2); ONNX Runtime needs an export per checkpoint and runs the padded graph only. The
kernel used here is the one those deprecated wrappers called, and it composes with the packed forward
(ray_cluster.packed). Outputs are close to fp32, not equal: BENCHMARKS.md has the agreement figures.
"""

from __future__ import annotations

from typing import Any


def _int8_linear_class() -> type:
    import torch

    class Int8Linear(torch.nn.Module):
        """y = x W^T + b with W in int8 (per-channel scales) and x quantized per call."""

        def __init__(self, linear: torch.nn.Linear) -> None:
            super().__init__()
            w = linear.weight.detach().float()
            scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()
            zero = torch.zeros(w.shape[0], dtype=torch.long)
            qw = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
            bias = None if linear.bias is None else linear.bias.detach().float()
            self.packed = torch.ops.quantized.linear_prepack(qw, bias)
            self.in_features, self.out_features = linear.in_features, linear.out_features

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # reduce_range: 7-bit activations, so x86's u8*s8 pair sums cannot saturate int16 (AVX2)
            y = torch.ops.quantized.linear_dynamic(x.reshape(-1, self.in_features), self.packed, True)
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
