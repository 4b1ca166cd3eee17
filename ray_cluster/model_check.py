"""Every processor's model resolved and checked where the run is submitted, before Prefect or Ray start.

A model spec resolves, in this order: `tiny` (built on the fly); an `s3://` prefix (listed: unsafe keys,
pickle-only weights); a local directory; a Hugging Face id, from the HF cache (`HF_HOME`,
`HF_HUB_CACHE`), else from the hub unless `HF_HUB_OFFLINE` is set. A directory at hand (local, or the
cached snapshot) is checked as the actors will load it: files, safetensors weights, a readable
config whose architecture and labels fit the processor, and a tokenizer that loads. No weights load.

A problem is a ConfigError naming the instance, the model as given and what to do (exit 2).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from xlmflow import storage
from xlmflow.errors import ConfigError
from xlmflow.ray_cluster.model_files import check_weights
from xlmflow.ray_cluster.models import LoadedModel, _local_dir, cache_root, check_safetensors, precheck
from xlmflow.ray_cluster.registry import registry

HF_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt"]  # what the actors fetch: never pickles
# the head each transformers Auto class puts on the encoder, as the end of an `architectures` entry
_HEADS = {
    "AutoModelForTokenClassification": ("ForTokenClassification", "a token-classification"),
    "AutoModelForSequenceClassification": ("ForSequenceClassification", "a sequence-classification"),
}


def check_processor(spec: Any, flag: str, local_actors: bool = True) -> None:
    """ConfigError unless the model of processor instance `spec` (a ProcessorSpec) resolves and fits.

    `flag` is the option that sets this instance's model (`--ner-model`, `--NAME.model`); with
    `local_actors` False (a remote cluster, whose nodes may see other files and caches), only what this
    host can judge for them is checked: the s3:// listing and directories that exist here.
    """
    cls = registry().get(spec.type)
    if cls is None or not cls.model_class:
        return
    model = spec.options.get("model")
    what = f"processor {spec.name} ({spec.type})"
    if not model:
        raise ConfigError(
            f"{what} needs a model: pass {flag} MODEL (a Hugging Face id, a local directory, an s3:// "
            "prefix, or tiny for the offline smoke-test model)"
        )
    try:
        proc = cls(spec, None)  # the options decide the model class (qe's cosine method: an encoder)
        kind = proc.model_kind()
        model_class = registry()[kind].model_class or "AutoModel"
    except Exception:  # noqa: BLE001 - a plug-in that needs run settings: its actor checks itself
        return
    try:
        if model == "tiny":
            return
        if model.startswith("s3://"):
            precheck(model, local_actors=local_actors)  # the listing: unsafe keys, pickle-only weights
            config = _s3_config(model)
            _check_head(config, model, model_class, spec.type)
            _check_with_processor(proc, model, config)
            return
        path = _local_dir(model) if (local_actors or os.path.exists(os.path.expanduser(model))) else None
        if path is None:
            if not local_actors:
                return
            path = _hf_snapshot(model)
            if path is None:
                return  # on the hub, not cached yet: the actors download it
        check_safetensors(path)
        config = _check_config(path, model_class, spec.type)
        _check_tokenizer(path)
        _check_with_processor(proc, path, config)
    except ConfigError as exc:
        raise ConfigError(f"{what}, model {model!r}: {exc}") from None


def _hf_snapshot(repo_id: str) -> str | None:
    """The cached snapshot of a hub id; None when the hub has it but this host has not fetched it yet."""
    # lazy: only hub model ids need it
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, local_files_only=True, allow_patterns=HF_PATTERNS)
    except Exception:  # noqa: BLE001 - not cached (or not a valid id): ask the hub, when allowed
        pass
    get = f"`hf download {repo_id}` where the hub is reachable"
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise ConfigError(
            f"not a local directory and not in the Hugging Face cache ({_hf_cache()}), and HF_HUB_OFFLINE "
            f"is set: check the id, run {get}, or pass a local directory or an s3:// prefix"
        )
    # lazy: only hub model ids need it
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        info = HfApi().model_info(repo_id, timeout=10)
    except GatedRepoError:
        raise ConfigError("is gated on the hub: accept its terms, then `hf auth login`") from None
    except RepositoryNotFoundError:
        raise ConfigError(
            "is not on the Hugging Face hub, or is private: check the id, or `hf auth login` for a "
            "private model, or pass a local directory or an s3:// prefix"
        ) from None
    except Exception as exc:  # noqa: BLE001 - no network
        raise ConfigError(
            f"is not in the Hugging Face cache ({_hf_cache()}) and the hub did not answer "
            f"({type(exc).__name__}): run {get}, or set HF_HUB_OFFLINE=1 with a populated cache"
        ) from None
    names = [s.rfilename for s in info.siblings or []]
    if not any(n.endswith(".safetensors") for n in names):
        check_weights(names, repo_id)
    return None


def _hf_cache() -> str:
    # lazy: only hub model ids need it
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _check_config(path: str, model_class: str, ptype: str) -> dict:
    """config.json as a dict, refused when unreadable or when its head does not fit `model_class`."""
    try:
        with open(os.path.join(path, "config.json")) as f:
            config = json.load(f)
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        raise ConfigError(f"no config.json in {path}; pass a complete checkpoint directory") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"config.json in {path} is unreadable ({exc})") from None
    _check_head(config, path, model_class, ptype)
    return config


def _s3_config(prefix: str) -> dict:
    """config.json under an s3:// prefix (a few hundred bytes; the weights are copied by the actors)."""
    fs, root = storage.fs_for(prefix)
    try:
        config = json.loads(fs.cat_file(f"{root.rstrip('/')}/config.json"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        raise ConfigError(f"no config.json under {prefix}; upload the whole checkpoint directory") from None
    except ValueError as exc:
        raise ConfigError(f"config.json under {prefix} is unreadable ({exc})") from None
    return config


def _check_head(config: dict, where: str, model_class: str, ptype: str) -> None:
    """Refuse a config whose model type is missing or whose head does not fit `model_class`."""
    if not config.get("model_type"):
        raise ConfigError(f"config.json in {where} names no model_type; is this a transformers checkpoint?")
    head = _HEADS.get(model_class)
    archs = config.get("architectures") or []
    if head and archs and not any(a.endswith(head[0]) for a in archs):
        raise ConfigError(
            f"it is a {', '.join(archs)} checkpoint, but {ptype} needs {head[1]} checkpoint "
            f"(*{head[0]}); pass one with that head"
        )
    if model_class == "AutoModelForTokenClassification" and not config.get("id2label"):
        raise ConfigError(f"its config.json has no id2label: {ptype} cannot name the labels it predicts")


def _check_tokenizer(path: str) -> None:
    """The fast tokenizer the actors need loads: its Rust core, once per content (seconds for XLM-R's
    17 MB tokenizer.json, on every run otherwise); a marker under the model cache remembers a success."""
    tj = os.path.join(path, "tokenizer.json")
    if not os.path.exists(tj):
        if not any(n.endswith(".model") for n in os.listdir(path)):
            raise ConfigError(
                f"no tokenizer in {path} (tokenizer.json or a sentencepiece *.model); copy the tokenizer "
                "files of the model it was trained from into that directory"
            )
        return  # a sentencepiece tokenizer: transformers converts it when the actor loads it

    with open(tj, "rb") as f:
        key = hashlib.sha256(f.read()).hexdigest()
    marker = os.path.join(cache_root(), "tokenizers", f"loads-{key[:32]}")
    if os.path.exists(marker):
        return
    # lazy: only a tokenizer check needs it
    from tokenizers import Tokenizer

    try:
        Tokenizer.from_file(tj)
    except Exception as exc:  # noqa: BLE001 - the Rust error says what is wrong with the file
        raise ConfigError(f"its tokenizer.json does not load ({exc})") from None
    try:  # best effort: without it the next run loads it again
        os.makedirs(os.path.dirname(marker), mode=0o700, exist_ok=True)
        open(marker, "w").close()
    except OSError:
        pass


class _Config:
    """config.json's fields with PretrainedConfig's defaults for the ones `check_model` reads, without
    importing transformers (and torch: seconds); other fields are read as written."""

    def __init__(self, raw: dict) -> None:
        self.__dict__.update(raw)
        labels = raw.get("id2label") or {i: f"LABEL_{i}" for i in range(int(raw.get("num_labels", 2)))}
        self.id2label = {int(k): v for k, v in labels.items()}
        self.num_labels = len(self.id2label)
        self.problem_type = raw.get("problem_type")
        self.architectures = raw.get("architectures")


def _check_with_processor(proc: Any, path: str, config: dict) -> None:
    """The processor's own `check_model` on the config (labels, outputs), without weights."""
    lm = LoadedModel(tokenizer=None, model=None, info={"path": path}, config=_Config(config))
    try:
        proc.check_model(lm)
    except (AttributeError, TypeError):  # a plug-in that reads more than the config: its actor checks
        pass
