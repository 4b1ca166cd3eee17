"""The shared XLM-R inference engine: tokenize once, window long texts, batch by tokens, survive OOM.

Every model processor (ner, embed, qe) goes through one `Engine`:
- **Tokenization** is one batched call of the fast (Rust) tokenizer, without special tokens, keeping
  offsets and `word_ids()`. It is a processor's `prepare` phase: on CUDA the model processors cut a
  batch into chunks of `prefetch_docs` rows and prepare chunk k+1 in a thread while the GPU runs chunk k
  (ray_cluster.processors.base.ModelProcessor).
- **Windows**: a text longer than the model's window (510 content tokens for XLM-R) is never truncated;
  it becomes overlapping windows over its one full tokenization, `stride` tokens of overlap. In an
  overlap each token is *owned* by the window where it sits furthest from a window edge (the cut is the
  middle of the overlap), so consumers can merge windows with every token counted exactly once.
- **Batching**: sequences are sorted by length (longest first, so an OOM shows up at once) and cut so
  that rows * longest <= `max_batch_tokens` (padded tokens per batch) and padding stays under 25% (on
  CUDA once a batch holds a quarter of the budget); results come back in input order.
  A batch without padding is run without an attention mask (SDPA can then pick its fastest kernel).
- **Forward path**: XLM-R/RoBERTa encoders and their token/sequence classifiers run *packed*
  (ray_cluster.packed: no padding FLOPs, attention per sequence); other models run the padded forward,
  which stays the reference. Packed batches are cut by real tokens (`max_batch_tokens`), padded ones by
  rows * longest. `forward_path` says which ran; `forward="packed"` refuses a model it cannot pack.
- **Precision**: CUDA runs bf16 *weights* (no autocast over fp32 weights) unless `gpu_precision="fp32"`;
  CPU runs fp32, or int8 Linear layers with `cpu_precision="int8"` (ray_cluster.quantize).
- **Device**: CUDA when available; batch k+1 is built, copied (pinned, non-blocking) and launched
  before the outputs of batch k are copied back. On CPU the thread count of the actor (the actor sets
  torch's threads; `num_threads` overrides).
- **OOM**: a CUDA out-of-memory error splits the batch in halves and retries each; a single sequence
  that still does not fit raises, so the processor base class isolates the document as a reject.

Pairs (QE) use `encode_pairs` (longest-first truncation with a record of what was cut) and `run`.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xlmflow.errors import ConfigError
from xlmflow.ray_cluster import onednn, packed
from xlmflow.ray_cluster.quantize import quantize_linears

if TYPE_CHECKING:
    import numpy as np

    from xlmflow.ray_cluster.models import LoadedModel

log = logging.getLogger(__name__)

PAD_SLACK = 1.25  # a batch pads its rows by at most this factor (see Engine.batches)
OUTPUT_SLACK = 4  # a packed batch's outputs, padded back for the heads, hold <= 4 x its token budget
FORWARDS = ("auto", "packed", "padded")

# head(model_output, attention_mask [B, T] on the device, rows) -> tensor or tuple of tensors, dim 0 = B
Head = Callable[[Any, Any, list[int]], Any]


@dataclass(slots=True)
class DocTokens:
    """One text's full tokenization, without special tokens."""

    ids: list[int]
    offsets: list[tuple[int, int]]  # character span of each token in the text (Python str indices)
    word_ids: list[int | None]


@dataclass(slots=True)
class Window:
    """A model input covering content tokens [start, end) of document `doc`."""

    doc: int
    start: int
    end: int
    own_start: int  # this window's share of the document when windows overlap
    own_end: int
    input_ids: list[int]  # with special tokens: content token j sits at position 1 + j - start

    def own_slice(self) -> slice:
        """Positions (in input_ids) of the tokens this window owns."""
        return slice(1 + self.own_start - self.start, 1 + self.own_end - self.start)


@dataclass(slots=True)
class PairInput:
    input_ids: list[int]
    a_tokens: int  # tokens of each side before truncation
    b_tokens: int
    a_kept: int  # tokens kept after truncation
    b_kept: int

    @property
    def truncated(self) -> bool:
        return self.a_kept < self.a_tokens or self.b_kept < self.b_tokens


def is_oom(exc: BaseException) -> bool:
    # lazy: torch takes seconds to import; only actors and model commands need it
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class Engine:
    def __init__(
        self,
        lm: LoadedModel,
        device: str = "cpu",
        *,
        max_batch_tokens: int = 8192,
        stride: int = 128,
        num_threads: int | None = None,
        prefetch_docs: int = 2048,
        forward: str = "auto",
        cpu_precision: str = "fp32",
        gpu_precision: str = "bf16",
    ) -> None:
        # lazy: torch takes seconds to import; only actors and model commands need it
        import torch

        self.lm, self.tokenizer = lm, lm.tokenizer
        self.device = "cuda" if device == "cuda" and torch.cuda.is_available() else "cpu"
        if self.device == "cpu" and num_threads:
            torch.set_num_threads(num_threads)
        self.config = lm.config
        if lm.model is None:  # tokenizer and config only: the CPU phases of a processor, no forward
            self.model, self.forward_path, self.precision = None, "none", "none"
        else:
            self._place_model(lm, forward, cpu_precision, gpu_precision)
        self.max_batch_tokens = max_batch_tokens
        self.prefetch_docs = prefetch_docs  # rows per prepare/infer chunk on CUDA
        self.min_fill = max_batch_tokens // 4 if self.device == "cuda" else 0  # see batches()
        tok = self.tokenizer
        positions = getattr(self.config, "max_position_embeddings", 514)
        # XLM-R/RoBERTa reserve 2 positions (padding_idx + 1 offset)
        self.max_len = min(int(tok.model_max_length), positions - 2)
        self.max_content = self.max_len - tok.num_special_tokens_to_add(pair=False)
        self.max_pair_content = self.max_len - tok.num_special_tokens_to_add(pair=True)
        if not 0 <= stride < self.max_content:
            raise ConfigError(f"stride {stride} must be between 0 and {self.max_content - 1} tokens")
        self.stride = stride
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

    def _place_model(self, lm: LoadedModel, forward: str, cpu_precision: str, gpu_precision: str) -> None:
        """Pick the forward path and precision, and put the model on the device in that precision."""
        # lazy: torch takes seconds to import; only actors and model commands need it
        import torch

        if forward not in FORWARDS:
            raise ConfigError(f"forward {forward!r}: choose one of {', '.join(FORWARDS)}")
        why = packed.unsupported(lm.model)
        if forward == "packed" and why:
            raise ConfigError(f"forward=packed cannot run model {lm.name}: {why}; use forward=auto or padded")
        self.forward_path = "packed" if forward != "padded" and why is None else "padded"
        self.precision = gpu_precision if self.device == "cuda" else cpu_precision
        self.model = lm.model.to(self.device).eval()
        if self.precision == "bf16":
            self.model = self.model.to(torch.bfloat16)
        elif self.precision not in ("fp32", "int8") or (self.precision == "int8" and self.device != "cpu"):
            raise ConfigError(
                f"precision {self.precision!r} on {self.device}: bf16 (CUDA), fp32 or int8 (CPU)"
            )
        self.gemm = "torch"
        # both replace Linear modules in a twin: the caller's model stays as it was
        if self.precision == "int8":
            self.model = quantize_linears(twin(self.model))
            self.gemm = "fbgemm-int8"
        elif self.device == "cpu" and self.precision == "fp32" and onednn.available():
            self.model = onednn.pack_linears(twin(self.model))
            self.gemm = "onednn"

    # ---- tokenization and windows ----
    def tokenize(self, texts: Sequence[str]) -> list[DocTokens]:
        """One batched fast-tokenizer call; no special tokens, no truncation."""
        if not texts:
            return []
        enc = self.tokenizer(
            [t or "" for t in texts],
            add_special_tokens=False,
            return_offsets_mapping=True,
            return_attention_mask=False,
            verbose=False,  # long texts are fine here: we window them
        )
        return [
            DocTokens(enc["input_ids"][i], enc["offset_mapping"][i], enc.word_ids(i))
            for i in range(len(texts))
        ]

    def with_specials(self, a: list[int], b: list[int] | None = None) -> list[int]:
        """<s> A </s> (single) or <s> A </s></s> B </s> (RoBERTa pair); [CLS] A [SEP] B [SEP] for BERT."""
        cls, sep = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        if b is None:
            return [cls, *a, sep]
        mid = [sep, sep] if self.tokenizer.num_special_tokens_to_add(pair=True) == 4 else [sep]
        return [cls, *a, *mid, *b, sep]

    def windows(self, docs: Sequence[DocTokens]) -> list[Window]:
        """Overlapping windows of <= max_content tokens; every document gets at least one window."""
        size, step = self.max_content, self.max_content - self.stride
        out: list[Window] = []
        for d, doc in enumerate(docs):
            n = len(doc.ids)
            spans = [(0, min(size, n))]
            while spans[-1][1] < n:
                s = spans[-1][0] + step
                spans.append((s, min(s + size, n)))
            for k, (s, e) in enumerate(spans):
                # own the overlap up to its middle: each token comes from the window where it has most context
                own_s = s if k == 0 else (s + spans[k - 1][1]) // 2
                own_e = e if k == len(spans) - 1 else (spans[k + 1][0] + e) // 2
                out.append(Window(d, s, e, own_s, own_e, self.with_specials(doc.ids[s:e])))
        return out

    def encode_pairs(self, a_texts: Sequence[str], b_texts: Sequence[str]) -> list[PairInput]:
        """Pairs as model inputs; too long pairs lose tokens from the end of the longer side first."""
        a_docs, b_docs = self.tokenize(a_texts), self.tokenize(b_texts)
        out = []
        for a, b in zip(a_docs, b_docs, strict=True):
            na, nb = len(a.ids), len(b.ids)
            ka, kb = na, nb
            while ka + kb > self.max_pair_content:  # longest-first, one token at a time (as HF does)
                if ka >= kb:
                    ka -= 1
                else:
                    kb -= 1
            out.append(PairInput(self.with_specials(a.ids[:ka], b.ids[:kb]), na, nb, ka, kb))
        return out

    # ---- the forward loop ----
    def batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices sorted longest first, cut so that rows * longest <= max_batch_tokens, and so that
        padding stays small: a row shorter than the batch's longest / PAD_SLACK starts the next batch
        (one budget-filling batch of a shard's short texts would otherwise pad them all to the longest).
        On CUDA that cut waits until the batch holds a quarter of the budget: small batches leave the
        GPU idle; on CPU the cost is per token, batch size hardly matters.
        Packed batches cost their real tokens only: they are cut at max_batch_tokens real tokens (and
        at OUTPUT_SLACK x the budget of rows * longest, the outputs padded back for the heads)."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        out: list[list[int]] = []
        tokens = 0
        for i in order:
            if out and self.forward_path == "packed":
                longest, rows = lengths[out[-1][0]], len(out[-1]) + 1
                if (
                    tokens + lengths[i] <= self.max_batch_tokens
                    and rows * longest <= OUTPUT_SLACK * self.max_batch_tokens
                ):
                    out[-1].append(i)
                    tokens += lengths[i]
                    continue
            elif out:
                longest, rows = lengths[out[-1][0]], len(out[-1]) + 1
                fits = rows * longest <= self.max_batch_tokens
                full_enough = (rows - 1) * longest >= self.min_fill
                if fits and not (full_enough and lengths[i] * PAD_SLACK < longest):
                    out[-1].append(i)
                    continue
            out.append([i])
            tokens = lengths[i]
        return out

    def run(self, seqs: Sequence[list[int]], head: Head, **model_kw: Any) -> list[tuple[np.ndarray, ...]]:
        """Run the model over token sequences; per sequence, the head's outputs as float32 numpy rows."""
        results: list[Any] = [None] * len(seqs)
        pending = None
        for rows in self.batches([len(s) for s in seqs]):
            parts = self._launch(rows, seqs, head, model_kw)
            if pending is not None:  # collect batch k only after batch k+1 is queued on the GPU
                self._collect(pending, results)
            pending = parts
        if pending is not None:
            self._collect(pending, results)
        return results

    def _launch(self, rows: list[int], seqs: Sequence[list[int]], head: Head, model_kw: dict) -> list:
        try:
            return [(rows, self._forward(rows, seqs, head, model_kw))]
        except Exception as exc:
            if not is_oom(exc) or len(rows) == 1:
                raise
        # Split outside the except block: until it ends, the exception's traceback pins the failed
        # forward's activations, and the halves would run out of memory too (seen on an H200).
        if self.device == "cuda":
            # lazy: torch takes seconds to import; only actors and model commands need it
            import torch

            torch.cuda.empty_cache()
        log.warning("out of memory on a batch of %d rows; splitting it in halves", len(rows))
        mid = len(rows) // 2
        return self._launch(rows[:mid], seqs, head, model_kw) + self._launch(rows[mid:], seqs, head, model_kw)

    def _forward(self, rows: list[int], seqs: Sequence[list[int]], head: Head, model_kw: dict) -> tuple:
        # lazy: torch takes seconds to import; only actors and model commands need it
        import torch

        lengths = torch.tensor([len(seqs[r]) for r in rows], dtype=torch.long)
        width = int(lengths.max())
        mask = (torch.arange(width) < lengths[:, None]).long()  # the heads' view: [B, W]
        if self.forward_path == "packed":
            ids = torch.tensor([t for r in rows for t in seqs[r]], dtype=torch.long)
        else:
            ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
            ids[mask.bool()] = torch.tensor([t for r in rows for t in seqs[r]], dtype=torch.long)
        padded = width * len(rows) != int(lengths.sum())
        if self.device == "cuda":
            ids = ids.pin_memory().to("cuda", non_blocking=True)
            mask = mask.pin_memory().to("cuda", non_blocking=True)
        # nested (jagged) tensors cannot be built under inference_mode; no_grad is what the packed path needs
        with torch.no_grad() if self.forward_path == "packed" else torch.inference_mode():
            if self.forward_path == "packed":
                kw = dict(model_kw)
                hidden = bool(kw.pop("output_hidden_states", False))
                if kw:
                    raise TypeError(f"the packed forward takes no {sorted(kw)}")
                out = packed.forward(self.model, ids, lengths.tolist(), output_hidden_states=hidden)
            else:
                out = self.model(input_ids=ids, attention_mask=mask if padded else None, **model_kw)
            res = head(out, mask, rows)
        return res if isinstance(res, tuple) else (res,)

    def describe(self) -> dict:
        """What ran, for the manifest: the forward path, the weights' precision and the GEMM kernels."""
        return {
            "forward": self.forward_path,
            "precision": self.precision,
            "device": self.device,
            "gemm": self.gemm,
        }

    @staticmethod
    def _collect(parts: list, results: list) -> None:
        for rows, tensors in parts:
            arrays = [t.float().cpu().numpy() for t in tensors]
            for j, r in enumerate(rows):
                results[r] = tuple(a[j] for a in arrays)


def twin(model: Any) -> Any:
    """A copy of `model`'s modules that shares its parameter and buffer tensors: its modules can be
    replaced (int8, oneDNN) without touching the model, and without a second copy of the weights."""

    shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo=shared)
