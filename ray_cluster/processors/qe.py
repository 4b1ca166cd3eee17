"""Translation quality estimation (processor `qe`, dataset "qe"): one score per src/mt pair, no reference.

Two scorers behind one processor, chosen by the `method` option (`--qe-method`):
- `regression` (default), a cross-encoder: a sequence-classification checkpoint with one output
  (TransQuest MonoTransQuest style) reads the pair as one input, `<s> src </s></s> mt </s>`, or
  `<s> mt </s></s> src </s>` with `--qe-order mt-src` (CometKiwi-style models put the translation first);
  score = the model's output (logit 0). A pair over the window (508 content tokens for XLM-R) loses
  tokens from the end of its longer side first (the engine's `encode_pairs`, as HF's `longest_first`);
  `truncation` then says what was cut, `"mt:700->300"` (tokens before -> kept; two sides joined by ";").
- `cosine`, a bi-encoder: src and mt are embedded apart (mean pooling over content tokens, the embed
  processor's phases over the batch's unique texts) and score = the cosine of the two vectors. Nothing is cut: a side over one
  window is pooled over all its windows; `truncation` says `"src:700 tokens/2 windows"`.
`truncated` is true when a side did not fit one model window (for cosine no token is lost then).

Language checks need no model. `src_lang`/`mt_lang` are detected (ray_cluster.langid, `und_<Script>`
when it cannot tell); `lang_mismatch` (see `lang_mismatch`) flags a translation that is not in the
expected target language (the `target_lang` option, else the row's `mt_lang` hint) or is in the
source's language (an untranslated copy). `length_ratio` = characters of mt / characters of src.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import pyarrow as pa
from pydantic import Field

from xlmflow.errors import ConfigError
from xlmflow.ray_cluster.langid import CODE_MAP, LanguageIdentifier, detector_version
from xlmflow.ray_cluster.processors.base import (
    BatchOutput,
    Dataset,
    ModelOptions,
    ModelProcessor,
    ScoreSample,
)
from xlmflow.ray_cluster.processors.embed import document_vectors, pooled_windows
from xlmflow.schemas import columns

if TYPE_CHECKING:
    from collections.abc import Sequence

    from xlmflow.ray_cluster.engine import DocTokens, Engine

# OUT/qe/date=D/: one row per pair and QE instance, joinable with pairs on pair_id; `truncation` says how
# the pair was cut, e.g. "src:120->60" ("" when it fit)
QE = columns(
    "pair_id string, instance string, score float32, method string, model string, src_lang string, "
    "mt_lang string, lang_mismatch bool, length_ratio float32, truncated bool, truncation string"
)
HAN_SCRIPTS = {"Hani", "Hans", "Hant", "Jpan"}  # one family: a Han-only text may be any of them


def _split(code: str | None) -> tuple[str, str]:
    """'deu_Latn' -> ('deu', 'Latn'); macrolanguage codes mapped as langid does ('ara' -> 'arb')."""
    lang, _, script = (code or "").strip().partition("_")
    lang = lang.lower()
    return CODE_MAP.get(lang, lang), script.title()


def lang_mismatch(src_lang: str, mt_lang: str, expected: str | None) -> bool:
    """True when the detected `mt_lang` is not the `expected` language, or is the detected `src_lang`.

    Languages compare on the ISO 639-3 part (cmn_Hans and cmn_Hant agree). An undetermined translation
    (`und_<Script>`) differs from the expected language only when its script does (und_Latn for an
    expected jpn_Jpan); with no letters (und_Zyyy) nothing can be said. `expected` may be None (no
    target known: only the copy rule applies) or a bare language ('deu').
    """
    mt, mt_script = _split(mt_lang)
    src = _split(src_lang)[0]
    copy = mt != "und" and mt == src
    if not expected:
        return copy
    want, want_script = _split(expected)
    if mt != "und":
        return copy or mt != want
    if not want_script or mt_script in ("", "Zyyy"):
        return False
    return mt_script != want_script and not {mt_script, want_script} <= HAN_SCRIPTS


def encode_pairs(engine: Engine, src: Sequence[str], mt: Sequence[str], order: str = "src-mt") -> list:
    """The CPU phase of the cross-encoder: model inputs of the pairs, in the configured order."""
    first, second = (src, mt) if order == "src-mt" else (mt, src)
    return engine.encode_pairs(first, second)


def pair_logits(engine: Engine, pairs: list) -> list[float]:
    """The device phase: logit 0 of every pair."""
    out = engine.run([p.input_ids for p in pairs], lambda out, mask, rows: out.logits[:, 0])
    return [float(r[0]) for r in out]


def truncation_notes(pairs: list, order: str = "src-mt") -> list[str]:
    names = ("src", "mt") if order == "src-mt" else ("mt", "src")
    return [
        ";".join(
            f"{name}:{n}->{k}"
            for name, n, k in ((names[0], p.a_tokens, p.a_kept), (names[1], p.b_tokens, p.b_kept))
            if k < n
        )
        for p in pairs
    ]


def score_pairs(engine: Engine, src: Sequence[str], mt: Sequence[str], order: str = "src-mt") -> tuple:
    """Cross-encoder scores (logit 0) and truncation notes ("" when the pair fit) per pair."""
    pairs = encode_pairs(engine, src, mt, order)
    return pair_logits(engine, pairs), truncation_notes(pairs, order)


@dataclass(frozen=True)
class CosineInputs:
    """The cosine method's CPU phase: the batch's unique texts (pairs of a parallel corpus share their
    sources), one tokenization of each and their windows."""

    texts: list[str]
    docs: list[DocTokens]
    windows: list


def prepare_cosine(engine: Engine, src: Sequence[str], mt: Sequence[str]) -> CosineInputs:
    texts = list(dict.fromkeys([*src, *mt]))
    docs = engine.tokenize([t or "" for t in texts])
    return CosineInputs(texts, docs, engine.windows(docs))


def cosine_scores(
    engine: Engine, src: Sequence[str], mt: Sequence[str], inputs: CosineInputs, pooled: list
) -> tuple:
    """Cosines of the mean-pooled src and mt vectors, and window notes ("" when both fit one)."""
    import numpy as np  # lazy, as in every processor: the CLI imports them all at start

    vecs = document_vectors(len(inputs.texts), engine.config.hidden_size, inputs.windows, pooled)
    at = {t: i for i, t in enumerate(inputs.texts)}
    scores = np.einsum("ij,ij->i", vecs[[at[t] for t in src]], vecs[[at[t] for t in mt]])
    n_win = collections.Counter(w.doc for w in inputs.windows)
    long = {t: i for t, i in at.items() if len(inputs.docs[i].ids) > engine.max_content}

    def note(name: str, text: str) -> str:
        i = long.get(text)
        return "" if i is None else f"{name}:{len(inputs.docs[i].ids)} tokens/{n_win[i]} windows"

    notes = [";".join(x for x in (note("src", s), note("mt", m)) if x) for s, m in zip(src, mt, strict=True)]
    return [float(x) for x in scores], notes


class QeOptions(ModelOptions):
    method: Literal["regression", "cosine"] = Field(
        "regression",
        description="regression: a one-output cross-encoder reads the pair; cosine: a sentence encoder "
        "embeds both sides apart.",
    )
    order: Literal["src-mt", "mt-src"] = Field("src-mt", description="Input order of the cross-encoder.")
    target_lang: str | None = Field(None, description="Expected language of translations (e.g. deu_Latn).")


class QeProcessor(ModelProcessor):
    """Reference-free translation quality of src/mt pairs as the dataset `qe`."""

    name = "qe"
    mode = "pairs"
    Options = QeOptions
    model_class = "AutoModelForSequenceClassification"
    datasets = {"qe": Dataset(QE, (ScoreSample("score", key="qe_scores"),))}  # the report's quantiles
    cpu_phases = False  # finish detects languages: the phase workers hold no language identifier

    @classmethod
    def tiny_config(cls) -> dict:
        return {"num_labels": 1, "problem_type": "regression"}

    @classmethod
    def hash_inputs(cls) -> dict[str, str]:
        return {"lid_detector": detector_version()}  # src_lang/mt_lang: new labels only with --force

    def languages(self, main: pa.Table, datasets: dict[str, list[pa.Table]]) -> dict[str, int] | None:
        """Pairs per detected direction (src_lang->mt_lang)."""
        parts = datasets.get("qe") or []
        src = [x for t in parts for x in t["src_lang"].to_pylist()]
        mt = [x for t in parts for x in t["mt_lang"].to_pylist()]
        return dict(collections.Counter(f"{a or 'und'}->{b or 'und'}" for a, b in zip(src, mt, strict=True)))

    def model_kind(self) -> str:
        return "qe" if self.options.method == "regression" else "embed"  # cosine: a sentence encoder

    def check_model(self, lm) -> None:  # noqa: ANN001
        cfg = lm.config
        archs = getattr(cfg, "architectures", None) or []
        if self.options.method == "regression" and (
            cfg.num_labels != 1 or (archs and not any(a.endswith("ForSequenceClassification") for a in archs))
        ):
            raise ConfigError(
                f"QE model {self.options.model!r} is not a one-output sequence classifier (num_labels "
                f"{cfg.num_labels}, architectures {archs}): its regression score would be an untrained "
                "head. Use a QE cross-encoder (e.g. TransQuest/monotransquest-da-multilingual), or "
                "--qe-method cosine for a sentence encoder"
            )

    def setup(self, device: str) -> None:
        super().setup(device)
        self.pipelined = False  # pairs are scored whole: one prepare, one infer
        self.lid = LanguageIdentifier()  # CLD2 first; lingua only for what CLD2 cannot decide

    def model_info(self) -> dict:
        o = self.options
        order = {"order": o.order} if o.method == "regression" else {"pooling": "mean"}
        return {**self.engine.lm.info, "method": o.method, **order, "lid": self.lid.info()}

    def prepare(self, batch: pa.Table) -> list | CosineInputs:
        src, mt = batch["src"].to_pylist(), batch["mt"].to_pylist()
        if self.options.method == "cosine":
            return prepare_cosine(self.engine, src, mt)
        return encode_pairs(self.engine, src, mt, self.options.order)

    def infer(self, prepared: list | CosineInputs) -> list:
        if isinstance(prepared, CosineInputs):
            return pooled_windows(self.engine, prepared.windows, "mean")
        return pair_logits(self.engine, prepared)

    def finish(self, batch: pa.Table, prepared: list | CosineInputs, inferred: list) -> BatchOutput:
        o = self.options
        src, mt = batch["src"].to_pylist(), batch["mt"].to_pylist()
        if isinstance(prepared, CosineInputs):
            scores, notes = cosine_scores(self.engine, src, mt, prepared, inferred)
        else:
            scores, notes = inferred, truncation_notes(prepared, o.order)
        uniq_src = list(dict.fromkeys(src))
        src_found = dict(zip(uniq_src, self.lid.detect(uniq_src), strict=True))
        src_lang = [src_found[t][0] for t in src]
        mt_lang = [lang for lang, _ in self.lid.detect(mt)]
        hints = (
            batch["mt_lang_hint"].to_pylist() if "mt_lang_hint" in batch.column_names else [None] * len(mt)
        )
        n = batch.num_rows
        cols = {
            "pair_id": batch["pair_id"].to_pylist(),
            "instance": [self.instance] * n,
            "score": scores,
            "method": [o.method] * n,
            "model": [self.engine.lm.name] * n,
            "src_lang": src_lang,
            "mt_lang": mt_lang,
            "lang_mismatch": [
                lang_mismatch(a, b, o.target_lang or h)
                for a, b, h in zip(src_lang, mt_lang, hints, strict=True)
            ],
            "length_ratio": [len(m) / len(t) if t else None for t, m in zip(src, mt, strict=True)],
            "truncated": [bool(x) for x in notes],
            "truncation": notes,
        }
        return BatchOutput(datasets={"qe": pa.Table.from_pydict(cols, schema=QE)})
