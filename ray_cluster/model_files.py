"""Which files of a checkpoint we copy and load, and object keys that are safe to copy.

A model prefix on S3 is written by whoever can write the bucket. Its keys become local paths on every
actor host, so a key like `models/x/../../site-packages/evil.pth` must never be joined into a path, and
only the files a safetensors checkpoint needs are copied: no pickles, no code, no `.pth` hooks.
"""

from __future__ import annotations

import fnmatch
import json
import os
import stat
from typing import NoReturn

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
# what a checkpoint file may weigh before it is refused unread: the largest XLM-R (XXL, 10.7B params)
# is 43 GB in fp32; config and tokenizer files are megabytes
MAX_WEIGHTS_BYTES = 256 * 1024**3
MAX_OTHER_BYTES = 1024**3
SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors library's own limit
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


def check_files(path: str) -> None:
    """ConfigError naming the file unless every checkpoint file in `path` is a regular file (links
    followed: the HF cache links into its blobs) of plausible size, and every safetensors file is as
    long as its header says; other entries may be folders or regular files only (a tokenizer may open
    its vocab.txt). Runs before anything reads or hashes them: a link to /dev/zero or a FIFO would
    otherwise be read forever."""
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        needed = is_checkpoint_file(name)
        try:
            st = os.stat(full)
        except OSError as exc:
            if not needed:
                continue  # a dangling link nobody opens
            _refuse(full, f"cannot be read ({exc.strerror or exc})")
        if not stat.S_ISREG(st.st_mode) and (needed or not stat.S_ISDIR(st.st_mode)):
            _refuse(full, "is not a regular file (a device, FIFO, socket or folder, or a link to one)")
        if not needed:
            continue
        weights = name.endswith(".safetensors")
        limit = MAX_WEIGHTS_BYTES if weights else MAX_OTHER_BYTES
        if st.st_size > limit:
            _refuse(
                full, f"is {st.st_size / 1024**3:.1f} GiB, more than a checkpoint file of this kind can be"
            )
        if weights:
            _check_safetensors_length(full, st.st_size)


def _check_safetensors_length(full: str, size: int) -> None:
    """The file holds an 8-byte header length, a JSON header, then exactly the tensor bytes it lists."""
    with open(full, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < n <= min(SAFETENSORS_MAX_HEADER, size - 8):
            _refuse(full, "is not a safetensors file (no valid header)")
        try:
            header = json.loads(f.read(n))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            _refuse(full, "is not a safetensors file (unreadable header)")
    if 8 + n + end != size:
        _refuse(full, f"is {size} bytes but its header describes {8 + n + end}: truncated or not safetensors")


def _refuse(full: str, why: str) -> NoReturn:
    raise ConfigError(
        f"model file {full} {why}; pass a checkpoint directory of regular files (config, tokenizer, "
        "*.safetensors weights)"
    )
