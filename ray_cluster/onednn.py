"""fp32 Linear layers on oneDNN's prepacked GEMM for CPU actors, the FFN's GELU fused into its GEMM.

`F.linear` on CPU copies the bias into the output and calls MKL's sgemm; then GELU is a pass of its own.
oneDNN (bundled with PyTorch, the kernel PyTorch's compiler uses for CPU inference) takes the weights
once in its blocked layout and adds the bias and the GELU in the GEMM's epilogue. Measured on 2 AVX2
cores (BENCHMARKS.md): the 768x768 layers 1.26x, 768->3072 1.12x, 3072->768 1.05x `F.linear`; the
GELU pass (5% of a forward) mostly disappears. Results match `F.linear` to float rounding (a
different summation order), not bit for bit.

`pack_linears` replaces the modules in place; the engine applies it to a twin of the loaded model
that shares its tensors (`xlmflow.ray_cluster.engine.twin`), so the loaded model is not changed.
"""

from __future__ import annotations

from typing import Any

# FFN blocks whose `dense` + `intermediate_act_fn` become one GEMM with a fused GELU
INTERMEDIATES = ("XLMRobertaIntermediate", "RobertaIntermediate", "BertIntermediate")


def available() -> bool:
    # lazy: torch takes seconds to import; only actors and model commands need it
    import torch

    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _dnnl_linear_class() -> type:
    # lazy: torch takes seconds to import; only actors and model commands need it
    import torch

    class DnnlLinear(torch.nn.Module):
        """y = post(x W^T + b), W held in oneDNN's layout; post is "none" or exact (erf) "gelu"."""

        def __init__(self, linear: torch.nn.Linear, post: str = "none") -> None:
            super().__init__()
            # a plain attribute, not a parameter: state_dict and .to() keep to the model's own tensors
            self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
            self.bias = linear.bias
            self.post, self.algorithm = post, ("none" if post == "gelu" else "")
            self.in_features, self.out_features = linear.in_features, linear.out_features

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.ops.mkldnn._linear_pointwise(
                x.reshape(-1, self.in_features), self.packed, self.bias, self.post, [], self.algorithm
            )
            return y.view(*x.shape[:-1], self.out_features)

        def extra_repr(self) -> str:
            return (
                f"in_features={self.in_features}, out_features={self.out_features}, onednn, post={self.post}"
            )

    return DnnlLinear


def exact_gelu(act: Any) -> bool:
    """True for the erf GELU modules (transformers' GELUActivation, torch's GELU), not tanh variants."""
    # lazy: torch takes seconds to import; only actors and model commands need it
    import torch.nn.functional as F

    name = type(act).__name__
    if name == "GELUActivation":  # transformers' exact GELU (erf); its tanh variants have other names
        return getattr(act, "act", None) is F.gelu
    return name == "GELU" and getattr(act, "approximate", "none") == "none"


def pack_linears(model: Any) -> Any:
    """Replace every fp32 nn.Linear of `model` (in place) with one on oneDNN; returns the model."""
    # lazy: torch takes seconds to import; only actors and model commands need it
    import torch

    dnnl = _dnnl_linear_class()
    for block in list(model.modules()):
        if type(block).__name__ in INTERMEDIATES and exact_gelu(block.intermediate_act_fn):
            block.dense = dnnl(block.dense, post="gelu")
            block.intermediate_act_fn = torch.nn.Identity()
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is torch.nn.Linear and child.weight.dtype == torch.float32
    ]
    for parent, name, child in targets:
        setattr(parent, name, dnnl(child))
    return model
