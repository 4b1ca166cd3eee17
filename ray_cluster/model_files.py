"""Which files of a checkpoint we copy and load, and object keys that are safe to copy.

A model prefix on S3 is written by whoever can write the bucket. Its keys become local paths on every
actor host, so a key like `models/x/../../site-packages/evil.pth` must never be joined into a path, and
only the files a safetensors checkpoint needs are copied: no pickles, no code, no `.pth` hooks.
"""

from __future__ import annotations

import fnmatch
import os

from xlmflow.errors import ConfigError

# everything from_pretrained needs for config, fast tokenizer and safetensors weights (flat directory)
CHECKPOINT_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "sentencepiece.bpe.model",
    "*.model",
    "*.safetensors",
    "model.safetensors.index.json",
)
PICKLE_WEIGHTS = ("pytorch_model.bin", "model.bin", "pytorch_model.bin.index.json", "model.pt", "model.ckpt")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
CONVERT_HINT = (
    "xlmflow loads only safetensors because unpickling a checkpoint can execute arbitrary code. Convert "
    "it once where you trust it: `AutoModel.from_pretrained(dir).save_pretrained(dir, "
    "safe_serialization=True)` (use the model's task class), then pass the converted directory"
)


def is_checkpoint_file(rel: str) -> bool:
    """True for a top-level file that loading a safetensors checkpoint needs."""
    return "/" not in rel and any(fnmatch.fnmatchcase(rel, pat) for pat in CHECKPOINT_FILES)


def safe_destination(root: str, rel: str, key: str) -> str:
    """The local path of object `rel` under `root`, or ConfigError naming `key` if it could leave root.

    Only plain relative paths pass: no NUL, not absolute, no '.', '..' or empty segments, and the
    resolved path must stay under root even after normalisation.
    """
    why = None
    if not rel or "\0" in rel:
        why = "is empty or contains a NUL byte"
    elif rel.startswith("/") or os.path.isabs(rel):
        why = "is an absolute path"
    elif any(seg in ("", ".", "..") for seg in rel.split("/")):
        why = "has '.', '..' or empty path segments"
    else:
        base = os.path.realpath(root)
        dest = os.path.realpath(os.path.join(base, *rel.split("/")))
        if os.path.commonpath([base, dest]) != base:
            why = "resolves outside the model cache"
    if why:
        raise ConfigError(
            f"refusing model object {key!r}: its key {why}, so copying it could write outside the model "
            "cache; remove it from the bucket (nothing was copied)"
        )
    return os.path.join(root, *rel.split("/"))


def check_weights(names: list[str], where: str) -> None:
    """ConfigError unless `names` (files of a checkpoint) include safetensors weights."""
    if any(n.endswith(".safetensors") for n in names):
        return
    pickles = sorted(n for n in names if n in PICKLE_WEIGHTS or n.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise ConfigError(f"model at {where} has only pickle weights ({', '.join(pickles)}); {CONVERT_HINT}")
    raise ConfigError(f"no *.safetensors weights in {where}; is this a model directory?")
