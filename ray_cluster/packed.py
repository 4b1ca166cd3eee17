"""Padding-free ("packed") forward for XLM-R / RoBERTa encoders.

The sequences of a batch are concatenated into one token stream [T, hidden] with boundaries
(`cu_seqlens`): the embeddings and every Linear, LayerNorm and GELU run on the T real tokens only, and
attention runs per sequence with torch's SDPA — on CUDA over a jagged nested tensor (one varlen kernel
for the batch), on CPU one SDPA call per sequence on strided views of Q/K/V (its CPU kernel reads them
in place; copying them head-major first measured 1.65x slower): torch 2.13's CPU SDPA over jagged
tensors takes a math path 16x slower than that loop (48 sequences, 5.5k tokens, 2 threads). A
block-diagonal mask over the whole pack is not used: its attention FLOPs exceed the padding it saves.

The checkpoint's own modules are called (their weights, whatever their dtype, int8 modules included);
nothing is copied. Outputs come back in the padded layout the heads expect ([B, W, ...], zeros after
each sequence's end), so a head works on either path. Models this does not cover (other encoder
families, decoders, other heads) run the padded forward: `unsupported()` says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xlmflow.ray_cluster.onednn import exact_gelu

ENCODERS = ("XLMRobertaModel", "RobertaModel")
HEADS = {"ForTokenClassification": "tokens", "ForSequenceClassification": "sequence"}


def head_kind(model: Any) -> str | None:
    """ "encoder", "tokens" or "sequence" for a model the packed forward covers, else None."""
    name = type(model).__name__
    if name in ENCODERS:
        return "encoder"
    family = next((e[: -len("Model")] for e in ENCODERS if name.startswith(e[: -len("Model")])), None)
    if family is None:
        return None
    return HEADS.get(name[len(family) :])


def unsupported(model: Any) -> str | None:
    """Why the packed forward cannot run this model (None: it can)."""
    kind = head_kind(model)
    if kind is None:
        return f"{type(model).__name__} is not an XLM-R/RoBERTa encoder or token/sequence classifier"
    base = model if kind == "encoder" else getattr(model, "base_model", None)
    if type(base).__name__ not in ENCODERS:
        return f"unexpected base model {type(base).__name__}"
    cfg = model.config
    if getattr(cfg, "is_decoder", False) or getattr(cfg, "add_cross_attention", False):
        return "decoder configurations attend causally"
    if getattr(cfg, "position_embedding_type", "absolute") not in (None, "absolute"):
        return f"position_embedding_type {cfg.position_embedding_type!r}"
    return None


@dataclass
class PackedOutput:
    """The fields the heads read, in the padded layout of `transformers` outputs."""

    logits: Any = None
    last_hidden_state: Any = None
    hidden_states: tuple | None = None


def forward(
    model: Any, ids: Any, lengths: list[int], *, output_hidden_states: bool = False, attention: str = "auto"
) -> PackedOutput:
    """Run `model` over the packed token ids `ids` [T] (sequences of `lengths`, in order)."""
    # lazy: torch takes seconds to import; only actors and model commands need it
    import torch

    kind = head_kind(model)
    base = model if kind == "encoder" else model.base_model
    dev = ids.device
    n, width, total = len(lengths), max(lengths), sum(lengths)
    lens = torch.tensor(lengths, dtype=torch.long)
    cu = torch.zeros(n + 1, dtype=torch.long)
    torch.cumsum(lens, 0, out=cu[1:])
    row = torch.repeat_interleave(torch.arange(n), lens)
    pos_in_seq = torch.arange(total) - cu[:-1][row]
    flat = (row * width + pos_in_seq).to(dev, non_blocking=True)  # each token's place in [B * W]

    emb = base.embeddings
    # the padded path's position ids: padding_idx + 1 + position (no pad token inside a sequence);
    # token type ids are all 0 there too
    positions = (pos_in_seq + emb.padding_idx + 1).to(dev, non_blocking=True)
    x = emb.word_embeddings(ids) + emb.token_type_embeddings.weight[0] + emb.position_embeddings(positions)
    x = emb.LayerNorm(x)
    hidden = [x] if output_hidden_states else []  # every layer's output is kept only when asked for
    attend = (
        _attend_jagged if (attention == "jagged" or (attention == "auto" and x.is_cuda)) else _attend_loop
    )
    spans = (cu.to(dev), width, lengths)
    for layer in base.encoder.layer:
        sa = layer.attention.self
        ctx = attend(sa.query(x), sa.key(x), sa.value(x), sa.num_attention_heads, spans)
        x = _token_ops(layer, ctx, x)
        if output_hidden_states:
            hidden.append(x)

    def pad(t: Any) -> Any:
        out = t.new_zeros((n * width, t.shape[-1]))
        out[flat] = t
        return out.view(n, width, -1)

    if kind == "tokens":
        return PackedOutput(logits=pad(model.classifier(model.dropout(x))))
    if kind == "sequence":
        first = x[cu[:-1].to(dev)]
        return PackedOutput(logits=model.classifier(first.unsqueeze(1)))
    states = tuple(pad(h) for h in hidden) if output_hidden_states else None
    return PackedOutput(last_hidden_state=pad(x), hidden_states=states)


TOKEN_ROWS = 2048  # rows per pass of a layer's per-token part: its intermediates stay in the CPU's caches


def _token_ops(layer: Any, ctx: Any, x: Any) -> Any:
    """A layer after attention: output projection, residual, LayerNorm, FFN, residual, LayerNorm. All of
    it is per token, so it runs over row blocks of the pack: the 4x-wide FFN activation of a block is
    still in cache for the GELU and the second GEMM, instead of a 100 MB tensor going through memory
    three times (on 2 AVX2 cores, one 8k-token batch: fp32 about 4% faster, int8, whose GEMMs wait on
    memory more, 8-15%)."""
    # lazy: torch takes seconds to import; only actors and model commands need it
    import torch

    so, inter, out = layer.attention.output, layer.intermediate, layer.output
    # exact GELU applied in place on the GEMM's output (the same kernel, one tensor fewer); a oneDNN
    # layer has it fused already (its act is Identity), other activations run as the model has them
    gelu_ = exact_gelu(inter.intermediate_act_fn)

    def block(c: Any, r: Any) -> Any:
        h = so.LayerNorm(so.dense(c).add_(r))
        f = torch.ops.aten.gelu_(inter.dense(h)) if gelu_ else inter(h)
        return out.LayerNorm(out.dense(f).add_(h))

    rows = 0 if x.is_cuda else TOKEN_ROWS  # a GPU has no such cache to fit, and wants the big GEMMs
    if rows <= 0 or x.shape[0] <= rows:
        return block(ctx, x)
    return torch.cat([block(c, r) for c, r in zip(ctx.split(rows), x.split(rows), strict=True)])


def _attend_loop(q: Any, k: Any, v: Any, heads: int, spans: tuple) -> Any:
    # lazy: torch takes seconds to import; only actors and model commands need it
    import torch
    import torch.nn.functional as F

    _, _, lengths = spans
    total, dim = q.shape[0], q.shape[-1] // heads
    # [T, heads, dim] views: a sequence's rows, transposed to [1, heads, n, dim], are strided views SDPA's
    # CPU kernel reads in place, and its output comes back token-major, so the only copy is the cat
    q3, k3, v3 = (t.view(total, heads, dim) for t in (q, k, v))
    outs = []
    start = 0
    for n in lengths:
        sl = slice(start, start + n)
        o = F.scaled_dot_product_attention(
            q3[None, sl].transpose(1, 2), k3[None, sl].transpose(1, 2), v3[None, sl].transpose(1, 2)
        )
        outs.append(o[0].transpose(0, 1).reshape(n, heads * dim))
        start += n
    return torch.cat(outs)


def _attend_jagged(q: Any, k: Any, v: Any, heads: int, spans: tuple) -> Any:
    # lazy: torch takes seconds to import; only actors and model commands need it
    import torch
    import torch.nn.functional as F

    cu, width, lengths = spans
    total, dim = q.shape[0], q.shape[-1] // heads

    def nest(t: Any) -> Any:  # [B, heads, j, dim]; min/max given so no device sync is needed
        return torch.nested.nested_tensor_from_jagged(
            t.view(total, heads, dim), cu, min_seqlen=min(lengths), max_seqlen=width
        ).transpose(1, 2)

    o = F.scaled_dot_product_attention(nest(q), nest(k), nest(v))
    return o.transpose(1, 2).values().reshape(total, -1)
