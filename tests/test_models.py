"""Model specs (tiny, local dir, HF cache, s3://), safetensors-only loading, and the shared engine."""

from __future__ import annotations

import os
import shutil

import pytest

from xlmflow.errors import ConfigError
from xlmflow.ray_cluster.models import META_FILE, content_hash, load_model, make_tiny
from xlmflow.ray_cluster.registry import make_settings


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> str:
    # one cache for the whole session (shared with test_ner/test_embed), so tiny models are built once
    return str(tmp_path_factory.getbasetemp() / "xlmflow-model-cache")


@pytest.fixture(scope="session")
def settings(model_cache):
    return make_settings(inputs=("in",), out="out", model_cache=model_cache)


@pytest.fixture(scope="session")
def tiny_ner(settings):
    return load_model("tiny", "ner", settings)


def test_make_tiny_is_deterministic_and_small(tmp_path):
    a, b, c = (make_tiny("embed", str(tmp_path / n), seed=s) for n, s in (("a", 0), ("b", 0), ("c", 1)))
    assert content_hash(a) == content_hash(b)
    assert content_hash(a) != content_hash(c)
    size = sum(os.path.getsize(os.path.join(a, f)) for f in os.listdir(a))
    assert size < 60_000_000
    assert not any(f.endswith(".bin") for f in os.listdir(a))


def test_tiny_spec_loads_real_tokenizer_and_records_identity(tiny_ner, settings):
    info = tiny_ner.info
    assert info["spec"] == "tiny" and info["smoke_test"] is True
    assert info["path"].startswith(settings.model_cache)
    assert len(info["sha256"]) == 64 and info["sha256"] == content_hash(info["path"])
    assert tiny_ner.name == f"tiny-ner@{info['sha256'][:12]}"
    assert tiny_ner.tokenizer("hello world")["input_ids"] == [0, 33600, 31, 8999, 2]
    assert tiny_ner.tokenizer.model_max_length == 512
    labels = set(tiny_ner.model.config.id2label.values())
    assert {"O", "B-PER", "I-PER", "B-LOC", "I-DATE"} <= labels


def test_pickle_only_checkpoint_is_refused(tiny_ner, tmp_path):
    import torch

    d = tmp_path / "pickled"
    d.mkdir()
    shutil.copy(os.path.join(tiny_ner.info["path"], "config.json"), d)
    torch.save({"w": torch.zeros(2)}, d / "pytorch_model.bin")
    with pytest.raises(ConfigError) as err:
        load_model(str(d), "ner")
    msg = str(err.value)
    assert "pytorch_model.bin" in msg and "execute" in msg and "safe_serialization=True" in msg


def test_local_dir_spec_and_missing_dir(tiny_ner, tmp_path):
    d = tmp_path / "my-ner"
    shutil.copytree(tiny_ner.info["path"], d)
    lm = load_model(str(d), "ner")
    assert lm.info["path"] == str(d) and lm.info["sha256"] == tiny_ner.info["sha256"]
    assert lm.name.endswith(tiny_ner.info["sha256"][:12])
    with pytest.raises(ConfigError, match="does not exist"):
        load_model(str(tmp_path / "nope"), "ner")


def test_hf_id_resolves_through_the_hf_cache_with_its_revision(tiny_ner, tmp_path, monkeypatch):
    import huggingface_hub.constants as hfc

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-ner"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(tiny_ner.info["path"], repo / "snapshots" / commit)
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lm = load_model("acme/tiny-ner", "ner")
    assert lm.info["revision"] == commit and "sha256" not in lm.info
    # a smoke-test checkpoint stays labelled as one whatever its spec
    assert lm.name == f"tiny-ner@{commit[:12]}"
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE"):
        load_model("acme/not-cached", "ner")


def test_s3_spec_is_cached_and_refetched_when_changed(tiny_ner, s3_bucket, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem()
    prefix = f"{s3_bucket}/models/ner"
    fs.put(tiny_ner.info["path"] + "/", prefix, recursive=True)
    settings = make_settings(inputs=("in",), out="out", model_cache=str(tmp_path / "cache"))

    first = load_model(prefix, "ner", settings)
    assert first.info["path"].startswith(str(tmp_path / "cache"))
    assert first.info["sha256"] == tiny_ner.info["sha256"]
    weights = os.path.join(first.info["path"], "model.safetensors")
    stamp = os.stat(weights).st_mtime_ns

    again = load_model(prefix + "/", "ner", settings)
    assert again.info["path"] == first.info["path"]
    assert os.stat(weights).st_mtime_ns == stamp  # served from the cache, not downloaded again

    cfg = (
        fs.cat(f"{prefix}/config.json")
        .decode()
        .replace('"xlmflow_smoke_test": true', '"xlmflow_smoke_test": false')
    )
    fs.pipe(f"{prefix}/config.json", cfg.encode())
    changed = load_model(prefix, "ner", settings)
    assert changed.info["path"] != first.info["path"]
    assert changed.info["sha256"] != first.info["sha256"]
    assert changed.info["smoke_test"] is False and changed.name.startswith(prefix + "@")

    with pytest.raises(ConfigError, match="no objects"):
        load_model(f"{s3_bucket}/missing", "ner", settings)


def _upload(bucket: str, prefix: str, files: dict[str, bytes]) -> list[str]:
    """put_object each file under prefix; returns the keys as the server stores them."""
    import boto3

    s3 = boto3.client("s3")
    name = bucket.removeprefix("s3://")
    for rel, data in files.items():
        s3.put_object(Bucket=name, Key=f"{prefix}/{rel}", Body=data)
    return [o["Key"] for o in s3.list_objects_v2(Bucket=name, Prefix=prefix)["Contents"]]


def _checkpoint_files(path: str) -> dict[str, bytes]:
    out = {}
    for n in set(os.listdir(path)) - {META_FILE}:  # the cache's own bookkeeping, not the checkpoint
        with open(os.path.join(path, n), "rb") as f:
            out[n] = f.read()
    return out


def test_s3_key_escaping_the_cache_is_refused_before_anything_is_written(tiny_ner, s3_bucket, tmp_path):
    hostile = "models/evil/../../../../tmp/xxx/pwned.pth"
    _upload(s3_bucket, "models/evil", _checkpoint_files(tiny_ner.info["path"]))
    keys = _upload(
        s3_bucket, "models/evil", {"../../../../tmp/xxx/pwned.pth": b"import os  # runs at startup\n"}
    )
    assert hostile in keys  # the server keeps the '..' segments: this is the key a copy would see
    # a cache four levels deep: the unchecked copy lands at tmp_path/a/tmp/xxx/pwned.pth
    cache = tmp_path / "a" / "b" / "cache"
    settings = make_settings(inputs=("in",), out="out", model_cache=str(cache))
    with pytest.raises(ConfigError) as err:
        load_model(f"{s3_bucket}/models/evil", "ner", settings)
    assert hostile in str(err.value) and "outside the model cache" in str(err.value)
    written = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs]
    assert written == [] and not os.path.exists("/tmp/xxx/pwned.pth")


@pytest.mark.parametrize(
    ("rel", "why"),
    [
        ("../x.json", "'..'"),
        ("a/../config.json", "'..'"),
        ("./config.json", "'.'"),
        ("a//config.json", "empty"),
        ("/etc/x.json", "absolute"),
        ("config\0.json", "NUL"),
        ("", "empty"),
    ],
)
def test_unsafe_keys_are_refused_by_name(rel, why, tmp_path):
    from xlmflow.ray_cluster.model_files import safe_destination

    with pytest.raises(ConfigError, match=why) as err:
        safe_destination(str(tmp_path), rel, f"bkt/m/{rel}")
    assert repr(f"bkt/m/{rel}") in str(err.value)
    assert safe_destination(str(tmp_path), "config.json", "k") == str(tmp_path / "config.json")


def test_s3_copy_takes_only_the_files_a_safetensors_checkpoint_needs(tiny_ner, s3_bucket, tmp_path, caplog):
    extra = {
        "pytorch_model.bin": b"pickle",
        "hook.pth": b"import os",
        "modeling_evil.py": b"raise SystemExit",
        "onnx/model.onnx": b"onnx",
        "notes.txt": b"hi",
    }
    _upload(s3_bucket, "models/mixed", {**_checkpoint_files(tiny_ner.info["path"]), **extra})
    settings = make_settings(inputs=("in",), out="out", model_cache=str(tmp_path / "cache"))
    with caplog.at_level("INFO", logger="xlmflow.ray_cluster.models"):
        lm = load_model(f"{s3_bucket}/models/mixed", "ner", settings)
    copied = set(os.listdir(lm.info["path"]))
    assert not copied & {"pytorch_model.bin", "hook.pth", "modeling_evil.py", "onnx", "notes.txt"}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= copied
    assert lm.info["sha256"] == tiny_ner.info["sha256"]
    assert "not copying 5 files" in caplog.text and "hook.pth" in caplog.text


def test_s3_pickle_only_prefix_is_refused_by_the_listing_with_the_conversion_hint(tiny_ner, s3_bucket):
    from xlmflow.ray_cluster.models import precheck

    cfg = _checkpoint_files(tiny_ner.info["path"])["config.json"]
    _upload(s3_bucket, "models/pickled", {"config.json": cfg, "pytorch_model.bin": b"pickle"})
    with pytest.raises(ConfigError) as err:
        precheck(f"{s3_bucket}/models/pickled")
    msg = str(err.value)
    assert "pytorch_model.bin" in msg and "execute" in msg and "safe_serialization=True" in msg


# ---- engine ----


def _engine(lm, **kw):
    from xlmflow.ray_cluster.engine import Engine

    return Engine(lm, "cpu", **kw)


def test_windows_cover_every_token_once(tiny_ner):
    eng = _engine(tiny_ner, stride=100)
    text = " ".join(f"word{i}" for i in range(700))
    (doc,) = eng.tokenize([text])
    assert len(doc.ids) > 2 * eng.max_content  # needs at least three windows
    wins = eng.windows([doc])
    assert len(wins) >= 3
    assert all(len(w.input_ids) <= 512 and w.end - w.start <= 510 for w in wins)
    assert wins[0].start == 0 and wins[-1].end == len(doc.ids)
    for a, b in zip(wins, wins[1:], strict=False):
        assert a.end - b.start == 100  # stride = overlap
        assert a.own_end == b.own_start  # owned ranges tile the document
    assert wins[0].own_start == 0 and wins[-1].own_end == len(doc.ids)
    for w in wins:  # the window's inputs are the document's tokens between its specials
        assert w.input_ids[1:-1] == doc.ids[w.start : w.end]
        assert w.input_ids[w.own_slice()] == doc.ids[w.own_start : w.own_end]


def test_batches_respect_the_token_budget_and_results_keep_input_order(tiny_ner):
    import numpy as np

    eng = _engine(tiny_ner, max_batch_tokens=64, forward="padded")
    lengths = [5, 30, 12, 64, 7, 7, 20, 3]
    batches = eng.batches(lengths)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) * max(lengths[i] for i in b) <= 64 for b in batches)
    # packed batches cost real tokens only: the budget counts those
    packed = _engine(tiny_ner, max_batch_tokens=64).batches(lengths)
    assert sorted(i for b in packed for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 64 for b in packed) and len(packed) < len(batches)
    # a batch takes no row it would pad by more than 25% (on CUDA: once it holds a quarter of the budget)
    wide = _engine(tiny_ner, max_batch_tokens=8192, forward="padded")
    assert [len(b) for b in wide.batches([100] * 30 + [90] * 10 + [70] * 30 + [10] * 200)] == [40, 30, 200]
    wide.min_fill = 8192 // 4
    assert [len(b) for b in wide.batches([100] * 10 + [70] * 30 + [10] * 200)] == [21, 30, 189]
    seqs = [[0, *range(100, 100 + n - 2), 2] for n in lengths]

    def head(out, mask, rows):
        return out.logits

    batched = eng.run(seqs, head)
    for s, (got,) in zip(seqs, batched, strict=True):
        (alone,) = eng.run([s], head)[0]
        assert np.allclose(got[: len(s)], alone[: len(s)], atol=1e-5)


class _OomAbove:
    """Test double for a GPU with little memory: raises CUDA OOM for batches above `limit` rows."""

    def __init__(self, model, limit: int) -> None:
        self.model, self.limit, self.config, self.calls = model, limit, model.config, []

    def to(self, device):
        return self

    def eval(self):
        return self

    def __call__(self, input_ids, **kw):
        import torch

        self.calls.append(input_ids.shape[0])
        if input_ids.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.model(input_ids=input_ids, **kw)


def test_oom_splits_the_batch_and_a_single_row_that_fails_raises(tiny_ner):
    import numpy as np
    import torch

    eng = _engine(tiny_ner, max_batch_tokens=10_000, forward="padded")
    eng.model = wrapped = _OomAbove(eng.model, limit=2)  # the engine's own model (a twin on CPU)
    eng.min_fill = eng.max_batch_tokens  # all seven rows in one batch, however their lengths differ
    ref = _engine(tiny_ner, max_batch_tokens=10_000)
    seqs = [[0, *range(200, 200 + n), 2] for n in (3, 9, 4, 6, 5, 8, 2)]

    def head(out, mask, rows):
        return out.logits

    got = eng.run(seqs, head)
    assert wrapped.calls[0] == 7 and max(c for c in wrapped.calls if c <= 2) == 2
    for s, (a,), (b,) in zip(seqs, got, ref.run(seqs, head), strict=True):
        assert np.allclose(a[: len(s)], b[: len(s)], atol=1e-5)

    wrapped.limit = 0
    with pytest.raises(torch.cuda.OutOfMemoryError):
        eng.run(seqs[:2], head)


def test_encode_pairs_truncates_longest_first_and_says_so(tiny_ner):
    eng = _engine(tiny_ner)
    short, long_ = "Guten Tag.", " ".join(["Menschenrechte"] * 400)
    fit, cut = eng.encode_pairs([short, short], ["Good day.", long_])
    assert not fit.truncated and fit.input_ids == tiny_ner.tokenizer(short, "Good day.")["input_ids"]
    assert cut.truncated and cut.a_kept == cut.a_tokens and cut.b_kept < cut.b_tokens
    assert len(cut.input_ids) == 512


def test_pair_regression_through_the_engine_matches_a_direct_forward(settings):
    """The QE path: pairs batched by the engine give the scores of one unbatched forward each."""
    import torch

    lm = load_model("tiny", "qe", settings)
    assert lm.model.config.num_labels == 1 and lm.name.startswith("tiny-qe@")
    eng = _engine(lm, max_batch_tokens=64)
    src = ["Alle Menschen sind frei.", "Jeder hat das Recht auf Leben.", "Niemand darf gefoltert werden."]
    mt = ["All human beings are free.", "Everyone has the right to life, liberty and security.", "No one."]
    pairs = eng.encode_pairs(src, mt)
    got = eng.run([p.input_ids for p in pairs], lambda out, mask, rows: out.logits[:, 0])
    for s, m, (score,) in zip(src, mt, got, strict=True):
        with torch.inference_mode():
            want = lm.model(**lm.tokenizer(s, m, return_tensors="pt")).logits[0, 0].item()
        assert abs(float(score) - want) < 1e-5
    assert len({round(float(g[0]), 6) for g in got}) == 3


def test_content_hash_is_remembered_across_processes_until_the_weights_change(tmp_path, monkeypatch):
    import xlmflow.ray_cluster.models as models

    monkeypatch.setenv("XLMFLOW_MODEL_CACHE", str(tmp_path / "cache"))
    d = make_tiny("ner", str(tmp_path / "m"), seed=1)
    first = content_hash(d)
    assert list((tmp_path / "cache" / "hashes").glob("*.json"))  # remembered on disk
    models._HASHES.clear()  # as in a new actor process
    calls = []
    real_sha = models.hashlib.sha256
    monkeypatch.setattr(models.hashlib, "sha256", lambda *a: calls.append(1) or real_sha(*a))
    assert content_hash(d) == first and not calls  # read from the memo, weights not re-read
    weights = next(p for p in os.listdir(d) if p.endswith(".safetensors"))
    with open(os.path.join(d, weights), "ab") as f:  # the weights change: size and mtime differ
        f.write(b"\0")
    models._HASHES.clear()
    assert content_hash(d) != first and calls


def test_tokenizer_memo_gives_the_same_tokenizer_and_is_read_only_when_private(tmp_path, monkeypatch):
    import json

    from xlmflow.ray_cluster.tokenizer_memo import load_tokenizer, tokenizer_key

    cache = str(tmp_path / "cache")
    d = make_tiny("ner", str(tmp_path / "m"), seed=1)
    key = tokenizer_key(d)
    built = load_tokenizer(d, key, cache)
    [memo] = (tmp_path / "cache" / "tokenizers").glob("*.pkl")
    assert memo.stat().st_mode & 0o777 == 0o600
    import transformers

    calls = []
    real = transformers.AutoTokenizer.from_pretrained
    monkeypatch.setattr(
        transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    again = load_tokenizer(d, key, cache)
    assert not calls and type(again) is type(built)
    path = os.path.join(os.path.dirname(__file__), "..", "examples", "udhr-sample.jsonl")
    with open(path, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f][:40]
    a = built(texts, return_offsets_mapping=True, truncation=True)
    b = again(texts, return_offsets_mapping=True, truncation=True)
    assert a["input_ids"] == b["input_ids"] and a["offset_mapping"] == b["offset_mapping"]
    assert again.all_special_ids == built.all_special_ids and again.model_max_length == built.model_max_length

    # a memo others can write may not be ours: not read, rebuilt and replaced by a private one
    memo.write_bytes(b"not a pickle")
    memo.chmod(0o666)
    assert load_tokenizer(d, key, cache)("hello world")["input_ids"] == built("hello world")["input_ids"]
    assert calls and memo.stat().st_mode & 0o777 == 0o600
