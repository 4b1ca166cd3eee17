"""Checkpoint files that are not what they claim are refused before anything reads them, and actors
that do not start in time fail the run with a message that says what they were loading."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from xlmflow.errors import ConfigError, FatalError

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "udhr-sample.jsonl")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    """The tiny ner checkpoint of the session's model cache (built once, shared with test_models)."""
    from xlmflow.ray_cluster.models import resolve
    from xlmflow.ray_cluster.registry import make_settings

    cache = str(tmp_path_factory.getbasetemp() / "xlmflow-model-cache")
    return resolve("tiny", "ner", make_settings(inputs=("in",), out="out", model_cache=cache))["path"]


def _copy(tiny_dir: str, dest) -> str:  # noqa: ANN001
    """A user's checkpoint directory: the cache entry's files without the cache's own record (which
    holds the weights' hash, so the weights would not even be read)."""
    from xlmflow.ray_cluster.models import META_FILE

    shutil.copytree(tiny_dir, dest, ignore=shutil.ignore_patterns(META_FILE))
    return str(dest)


def _weights(d: str) -> str:
    return os.path.join(d, next(f for f in os.listdir(d) if f.endswith(".safetensors")))


def test_checkpoint_files_that_are_not_what_they_claim_are_refused_unread(tiny_dir, tmp_path):
    from xlmflow.ray_cluster.models import precheck, resolve

    precheck(tiny_dir)  # the real checkpoint passes

    def refused(d: str, name: str, why: str) -> None:
        t0 = time.monotonic()
        for check in (lambda: precheck(d), lambda: resolve(d, "ner")):  # the CLI's check, the actor's
            with pytest.raises(ConfigError) as err:
                check()
            msg = str(err.value)
            assert os.path.join(d, name) in msg and why in msg, msg
        assert time.monotonic() - t0 < 10

    zero = _copy(tiny_dir, tmp_path / "zero")
    weights = os.path.basename(_weights(zero))
    os.remove(_weights(zero))
    os.symlink("/dev/zero", os.path.join(zero, weights))  # read forever by a hash
    refused(zero, weights, "is not a regular file")

    fifo = _copy(tiny_dir, tmp_path / "fifo")
    os.remove(os.path.join(fifo, "tokenizer.json"))
    os.mkfifo(os.path.join(fifo, "tokenizer.json"))  # an open() would block
    refused(fifo, "tokenizer.json", "is not a regular file")
    os.remove(os.path.join(fifo, "tokenizer.json"))
    shutil.copy(os.path.join(tiny_dir, "tokenizer.json"), fifo)
    os.symlink(
        "/dev/zero", os.path.join(fifo, "vocab.txt")
    )  # not copied from S3, but a tokenizer may read it
    refused(fifo, "vocab.txt", "is not a regular file")

    cut = _copy(tiny_dir, tmp_path / "cut")
    with open(_weights(cut), "r+b") as f:
        f.truncate(os.path.getsize(_weights(cut)) - 1)
    refused(cut, os.path.basename(_weights(cut)), "truncated or not safetensors")

    huge = _copy(tiny_dir, tmp_path / "huge")
    try:
        os.truncate(_weights(huge), 300 * 1024**3)  # sparse: takes no space
    except OSError as exc:
        pytest.skip(f"this filesystem cannot hold a sparse 300 GiB file: {exc}")
    refused(huge, os.path.basename(_weights(huge)), "more than a checkpoint file of this kind can be")


def test_cli_refuses_a_weights_link_to_dev_zero_before_ray_starts(tiny_dir, tmp_path):
    zero = _copy(tiny_dir, tmp_path / "zero")
    weights = _weights(zero)
    os.remove(weights)
    os.symlink("/dev/zero", weights)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "RAY_ADDRESS"}
    cmd = [sys.executable, "-m", "xlmflow.cli", "run", SAMPLE, "--out", str(tmp_path / "o")]
    p = subprocess.run(
        cmd + ["--tasks", "ner", "--ner-model", zero], capture_output=True, text=True, env=env, timeout=120
    )
    assert p.returncode == 2, p.stderr[-3000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("xlmflow: configuration error: processor ner (ner), model "), last
    assert f"model file {weights} is not a regular file" in last, last
    assert "Traceback" not in p.stderr and not (tmp_path / "o").exists()


def test_actors_that_do_not_start_in_time_fail_naming_the_models_and_the_option(ray_local, tmp_path):
    from xlmflow.cli import build_parser
    from xlmflow.cli_options import job_kwargs
    from xlmflow.ray_cluster.pool import get_pool, shutdown_pools
    from xlmflow.ray_cluster.registry import make_settings

    argv = ["run", "x", "--out", "o", "--actor-start-timeout", "2.5"]
    assert job_kwargs(build_parser(argv).parse_args(argv))["actor_start_timeout"] == 2.5

    # a fresh model cache: the actor builds the tiny checkpoint and loads the real XLM-R tokenizer,
    # which takes seconds (torch's import alone takes more than the 1 s allowed here)
    s = make_settings(
        inputs=("in",),
        out=str(tmp_path / "out"),
        tasks="lid,ner",
        ner_model="tiny",
        model_cache=str(tmp_path / "fresh-cache"),
        actors=1,
        actor_start_timeout=1,
    )
    shutdown_pools()
    t0 = time.monotonic()
    with pytest.raises(FatalError) as err:
        get_pool(s).actor_infos  # noqa: B018 - waits for the actors
    assert time.monotonic() - t0 < 30
    msg = str(err.value)
    assert "0 of 1 shard actors started within --actor-start-timeout 1s" in msg, msg
    assert "loading lid (lid), ner (ner, model tiny)" in msg and "raise --actor-start-timeout" in msg, msg
