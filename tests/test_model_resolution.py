"""Models resolved and checked before Prefect or Ray start: a Hugging Face cache laid out as the hub
client writes it, resolved by id offline; every model problem one line naming the processor and the
model, exit 2, in seconds; every hint those lines give accepted by the tool it names."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from xlmflow.ray_cluster.models import META_FILE, make_tiny

CLI = [sys.executable, "-m", "xlmflow.cli"]
SAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "udhr-sample.jsonl")
REV = "0123456789abcdef0123456789abcdef01234567"
FAST_S = 5  # a model problem is reported this fast: nothing heavy is imported, no weights are read


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, str]:
    """Tiny ner and classify checkpoints, and an HF cache holding the ner one as tiny-org/tiny-ner."""
    root = tmp_path_factory.mktemp("ckpts")
    ner, classify = make_tiny("ner", str(root / "ner")), make_tiny("classify", str(root / "classify"))
    hub = root / "hub"
    repo = hub / "models--tiny-org--tiny-ner"
    snap = repo / "snapshots" / REV
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for name in os.listdir(ner):  # content-addressed blobs, linked from the snapshot, as the hub client does
        if name == META_FILE:
            continue
        data = open(os.path.join(ner, name), "rb").read()
        blob = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / blob).write_bytes(data)
        os.symlink(os.path.join("..", "..", "blobs", blob), snap / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV)
    return {"ner": ner, "classify": classify, "hub": str(hub), "root": str(root)}


def _env(hub: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "RAY_ADDRESS"}
    env.pop("XLMFLOW_FAULTS", None)
    return env | {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": hub, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def _refused(args: list[str], env: dict, tmp_path) -> str:  # noqa: ANN001
    """Run the CLI; check exit 2 within FAST_S and one line (a Ray or Prefect start would log more)."""
    t0 = time.monotonic()
    p = subprocess.run(
        [*CLI, "run", SAMPLE, "--out", str(tmp_path / "o"), *args], capture_output=True, text=True, env=env
    )
    secs = time.monotonic() - t0
    assert p.returncode == 2, p.stderr[-3000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xlmflow: configuration error: "), p.stderr[-3000:]
    assert secs < FAST_S, (secs, lines)
    return lines[0]


def _accepted(flag: str, extra: list[str] = ()) -> None:  # noqa: ANN001
    """The flag a hint names parses (with a value) as an option of `xlmflow run`."""
    from xlmflow.cli import build_parser

    argv = ["run", SAMPLE, "--out", "o", *extra, flag, "tiny"]
    ns = build_parser(argv).parse_args(argv)
    assert "tiny" in vars(ns).values(), (flag, vars(ns))


def test_cached_hub_id_resolves_offline_and_problems_are_one_line(ckpts, tmp_path):
    env = _env(ckpts["hub"])
    # resolved by id from the cache the test wrote, the hub unreachable: the checks pass, and the
    # actors' loader finds the same snapshot
    code = (
        "from xlmflow.ray_cluster.model_check import check_processor\n"
        "from xlmflow.ray_cluster.models import load_model\n"
        "from xlmflow.settings import ProcessorSpec\n"
        "check_processor(ProcessorSpec(name='ner', type='ner', options={'model': 'tiny-org/tiny-ner'}), '-')\n"
        "lm = load_model('tiny-org/tiny-ner', 'ner', weights=False)\n"
        "print(lm.info['path'], lm.info['revision'])\n"
    )
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert got.returncode == 0, got.stderr[-3000:]
    path, rev = got.stdout.split()
    assert path == os.path.join(ckpts["hub"], "models--tiny-org--tiny-ner", "snapshots", REV) and rev == REV

    # through the CLI: instance a resolves from the cache, b has no model: b is the one named
    line = _refused(["--proc", "a=ner", "--a.model", "tiny-org/tiny-ner", "--proc", "b=ner"], env, tmp_path)
    assert "processor b (ner) needs a model: pass --b.model MODEL" in line, line
    _accepted(re.search(r"pass (\S+) MODEL", line).group(1), ["--proc", "b=ner"])

    line = _refused(["--tasks", "ner"], env, tmp_path)  # forgot --ner-model
    assert "processor ner (ner) needs a model: pass --ner-model MODEL" in line, line
    _accepted(re.search(r"pass (\S+) MODEL", line).group(1))

    for missing in ("tiny-org/absent", "no-such-org/no-such-model"):  # not cached, hub unreachable
        line = _refused(["--tasks", "ner", "--ner-model", missing], env, tmp_path)
        assert f"processor ner (ner), model {missing!r}: not a local directory and not in the" in line, line
        assert f"run `hf download {missing}` where the hub is reachable" in line, line

    # the download hint works with the installed client: offline, it finds the cached snapshot
    hf = os.path.join(os.path.dirname(sys.executable), "hf")
    got = subprocess.run([hf, "download", "tiny-org/tiny-ner"], capture_output=True, text=True, env=env)
    assert got.returncode == 0 and got.stdout.strip().endswith(REV), got.stdout + got.stderr

    # a sequence-classification checkpoint given to ner
    line = _refused(["--tasks", "ner", "--ner-model", ckpts["classify"]], env, tmp_path)
    assert (
        f"processor ner (ner), model {ckpts['classify']!r}: it is a XLMRobertaForSequenceClassification"
        in line
    )
    assert "needs a token-classification checkpoint" in line, line

    # no tokenizer files beside the weights
    bare = tmp_path / "no-tokenizer"
    shutil.copytree(ckpts["ner"], bare, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens*"))
    line = _refused(["--proc", "ents=ner", "--ents.model", str(bare)], env, tmp_path)
    assert f"processor ents (ner), model {str(bare)!r}: no tokenizer in" in line, line


def test_a_head_that_does_not_fit_its_weights_fails_in_the_actor_as_one_line(ckpts, cli_env, tmp_path):
    """config.json promises more labels than the classifier has rows: only loading the weights shows it."""
    import json

    bad = tmp_path / "misfit"
    shutil.copytree(ckpts["ner"], bad, ignore=shutil.ignore_patterns(META_FILE))
    cfg = json.loads((bad / "config.json").read_text())
    labels = [*cfg["id2label"].values(), "B-MISC", "I-MISC"]
    cfg["id2label"], cfg["label2id"] = dict(enumerate(labels)), {lab: i for i, lab in enumerate(labels)}
    (bad / "config.json").write_text(json.dumps(cfg))
    p = subprocess.run(
        [*CLI, "run", SAMPLE, "--out", str(tmp_path / "o"), "--proc", "ents=ner", "--ents.model", str(bad)],
        capture_output=True,
        text=True,
        env=cli_env,
        timeout=240,
    )
    assert p.returncode == 2, p.stderr[-3000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith(f"xlmflow: configuration error: processor ents (ner), model {str(bad)!r}: "), last
    assert "weights do not fit the model its config.json describes" in last, last
    assert "Traceback" not in p.stderr and "ignore_mismatched_sizes" not in p.stderr, p.stderr[-3000:]


def test_s3_prefix_config_is_checked_against_the_processor(ckpts, s3_bucket):
    """An s3:// model is listed and its config.json read before anything is copied."""
    import boto3

    from xlmflow.errors import ConfigError
    from xlmflow.ray_cluster.model_check import check_processor
    from xlmflow.settings import ProcessorSpec

    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    bucket = s3_bucket.removeprefix("s3://")
    for kind in ("ner", "classify"):  # the weights are only listed: a stand-in file does
        s3.put_object(Bucket=bucket, Key=f"{kind}/config.json", Body=open(f"{ckpts[kind]}/config.json", "rb"))
        s3.put_object(Bucket=bucket, Key=f"{kind}/model.safetensors", Body=b"listed, not read")
    check_processor(
        ProcessorSpec(name="ner", type="ner", options={"model": f"{s3_bucket}/ner"}), "--ner-model"
    )
    spec = ProcessorSpec(name="ents", type="ner", options={"model": f"{s3_bucket}/classify/"})
    with pytest.raises(ConfigError) as err:
        check_processor(spec, "--ents.model", local_actors=False)
    assert (
        f"processor ents (ner), model '{s3_bucket}/classify/': it is a XLMRobertaForSequenceClassification"
        in (str(err.value))
    )
