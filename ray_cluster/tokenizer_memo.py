"""Tokenizers loaded once: per process by the hash of their files, and across actor starts through a
pickled memo under the model cache (XLM-R's tokenizer takes seconds to build from its tokenizer.json).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import stat
import uuid
from typing import Any

log = logging.getLogger(__name__)

# tokenizers by the hash of their files: XLM-R's takes seconds to load, and the model instances of one
# actor (ner and embed, named instances: XLM-R checkpoints share one tokenizer) load it once
TOKENIZERS: dict[str, Any] = {}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


def tokenizer_key(path: str) -> str:
    if not os.path.exists(os.path.join(path, "tokenizer.json")):
        return "path:" + os.path.abspath(path)  # built from other files: no sharing
    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        f = os.path.join(path, name)
        if os.path.exists(f):
            with open(f, "rb") as fh:
                h.update(name.encode() + b"\0" + hashlib.sha256(fh.read()).digest())
    return h.hexdigest()


def load_tokenizer(path: str, key: str, cache: str) -> Any:
    """`AutoTokenizer.from_pretrained`, through a memo of the loaded object under the model cache `cache`.

    transformers 5 rebuilds XLM-R's tokenizer from its 17 MB tokenizer.json on every load (5-6 s here,
    on every actor start); unpickling the object it built takes 1.5 s, is the same object (the Rust
    tokenizer pickles as its own JSON), and is keyed by the hash of the tokenizer files and the library
    versions. The memo is our own file: read only when this user owns it and nobody else can write
    it or its folder (a pickle runs code), written atomically, and any failure means a normal load.
    """
    import tokenizers  # lazy, as transformers: seconds to import, and only actors load models
    import transformers
    from transformers import AutoTokenizer

    memo = None
    if not key.startswith("path:"):
        tag = f"{key[:32]}-t{transformers.__version__}-k{tokenizers.__version__}.pkl"
        memo = os.path.join(cache, "tokenizers", tag)
        if private_file(memo):
            try:
                with open(memo, "rb") as f:
                    return pickle.load(f)
            except Exception as exc:  # noqa: BLE001 - a damaged memo: load normally, rewrite it
                log.debug("tokenizer memo %s unreadable (%s); loading %s", memo, exc, path)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if memo is not None:
        tmp = f"{memo}.{uuid.uuid4().hex}.tmp"
        try:  # best effort: a read-only cache only costs the next load
            os.makedirs(os.path.dirname(memo), mode=0o700, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                pickle.dump(tok, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, memo)
        except Exception as exc:  # noqa: BLE001
            log.debug("could not write tokenizer memo %s: %s", memo, exc)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return tok


def private_file(path: str) -> bool:
    """A regular file owned by this user that only this user can write, in a folder likewise."""
    try:
        for p, want_dir in ((os.path.dirname(path), True), (path, False)):
            st = os.lstat(p)
            kind_ok = stat.S_ISDIR(st.st_mode) if want_dir else stat.S_ISREG(st.st_mode)
            if not kind_ok or st.st_uid != os.getuid() or st.st_mode & 0o022:
                return False
    except OSError:
        return False
    return True
