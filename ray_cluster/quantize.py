"""int8 Linear layers for CPU actors (`--cpu-precision int8`): dynamic quantization, our own module.

Every `nn.Linear` of the model becomes an `Int8Linear`: weights quantized once, per output channel,
symmetric int8; activations quantized per call inside the kernel (one scale per batch, 7 bits: on CPUs
without VNNI, 8-bit activations can saturate the kernel's int16 pair sums); the matmul is PyTorch's
fbgemm/x86 int8 GEMM (`torch.ops.quantized.linear_dynamic`), accumulating in int32, returning fp32.
Embeddings, LayerNorm, GELU and attention stay fp32.

Why this kernel, measured on 2 AVX2 cores (BENCHMARKS.md): it ran a 2048x768x3072 Linear at 2.0x fp32
and stays ahead at small batches; torchao's int8 dynamic quantization runs `torch._int_mm`, 25x *slower*
than fp32 on CPU in eager mode; oneDNN's `qlinear_pointwise` with our own activation quantization ran
1.2-1.7x (its weights are packed for one batch shape); ONNX Runtime needs a 1 GB export and a
quantization pass per checkpoint and runs the padded graph only. The cost of the choice: the
quantized-tensor constructor used to pack the weights (`torch.quantize_per_channel`) and the wrapper
`torch.ao.quantization.quantize_dynamic` (which we do not use) are deprecated in torch 2.13, which we
pin; when they go, ONNX Runtime's dynamic quantization is the replacement to measure. Outputs are close
to fp32, not equal: BENCHMARKS.md has the agreement figures.
"""

from __future__ import annotations

import warnings
from typing import Any


def _int8_linear_class() -> type:
    # lazy: torch takes seconds to import; only actors and model commands need it
    import torch

    class Int8Linear(torch.nn.Module):
        """y = x W^T + b with W in int8 (per-channel scales) and x quantized per call."""

        def __init__(self, linear: torch.nn.Linear) -> None:
            super().__init__()
            w = linear.weight.detach().float()
            scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()
            zero = torch.zeros(w.shape[0], dtype=torch.long)
            with warnings.catch_warnings():  # its deprecation, discussed above; said once in the docs
                warnings.simplefilter("ignore", UserWarning)
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
    # lazy: torch takes seconds to import; only actors and model commands need it
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
