"""What the benchmark scripts share: where their corpora come from and the XLM-R-base-shaped models."""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# UDHR paragraphs in 80 languages, in the repository (tests/data/README.md says where they come from)
PARAGRAPHS = os.path.join(ROOT, "tests", "data", "parallel.jsonl")
ARTICLES_HELP = (
    "UDHR articles as JSON lines of {id, lang, text}, one whole article per line (parallel_articles.jsonl "
    "of the UDHR corpus tests/data/README.md describes; the repository holds only its paragraphs)"
)


def add_corpus_argument(ap: argparse.ArgumentParser, articles: bool = False) -> None:
    """`--corpus PATH`: the repository's UDHR paragraphs by default; articles must be given."""
    if articles:
        ap.add_argument("--corpus", required=True, metavar="JSONL", help=ARTICLES_HELP)
    else:
        ap.add_argument(
            "--corpus",
            default=PARAGRAPHS,
            metavar="JSONL",
            help="JSON lines of {id, lang, text} (default: %(default)s)",
        )


def engine_parser(doc: str | None, docs: int, articles: bool = True) -> argparse.ArgumentParser:
    """The options every engine benchmark takes: the corpus, how many documents, torch threads, the
    engine's token budget and window stride."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_corpus_argument(ap, articles)
    ap.add_argument("--docs", type=int, default=docs)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--max-batch-tokens", type=int, default=8192)
    ap.add_argument("--stride", type=int, default=128)
    return ap


def read_corpus(path: str) -> list[dict]:
    """The records of a JSON lines corpus; exits with one line saying what to give when it is missing."""
    if not os.path.isfile(path):
        sys.exit(
            f"{os.path.basename(sys.argv[0])}: corpus {path!r} not found; give --corpus PATH (see --help)"
        )
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def xlmr_base(out: str, model_class: str, config: dict, tokenizer_file: str | None = None) -> str:
    """An XLM-R-base-shaped checkpoint of `model_class` (random weights, seed 0) with the real XLM-R
    tokenizer (from `tokenizer_file`, else the one the tiny models use), written to `out`."""
    import torch
    import transformers
    from transformers import XLMRobertaConfig, XLMRobertaTokenizerFast

    from xlmflow.ray_cluster.models import BASE_SHAPE, xlmr_tokenizer_file

    tok = XLMRobertaTokenizerFast(
        tokenizer_file=tokenizer_file or xlmr_tokenizer_file(), model_max_length=512
    )
    cfg = XLMRobertaConfig(
        vocab_size=250002, max_position_embeddings=514, type_vocab_size=1, **BASE_SHAPE, **config
    )
    torch.manual_seed(0)
    getattr(transformers, model_class)(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out
