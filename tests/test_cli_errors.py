"""Failures as a user meets them through the real CLI: the right exit code, one `xlmflow: …` line that
says what to change, no traceback, and no secret anywhere."""

from __future__ import annotations

import errno
import glob
import http.client
import http.server
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from xlmflow.errors import ConfigError, FatalError, InputsChangedError
from xlmflow.failures import explain
from xlmflow.uris import has_userinfo, redact

CLI = [sys.executable, "-m", "xlmflow.cli"]
SAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "udhr-sample.jsonl")
SECRET = "SuperSecret123"


def _run(args: list[str], env: dict, timeout: float = 240) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    p = subprocess.run(CLI + args, capture_output=True, text=True, env=env, timeout=timeout)
    return p, time.monotonic() - t0


def _one_error_line(p: subprocess.CompletedProcess, code: int) -> str:
    """The last stderr line, after checking the exit code, the prefix and the absence of tracebacks."""
    assert p.returncode == code, p.stderr[-3000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith(("xlmflow: error", "xlmflow: configuration error")), last
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    assert SECRET not in p.stdout + p.stderr
    return last


def _ray_sessions() -> set[str]:
    """Ray sessions on this host: Ray's default directory and the one a local Ray of xlmflow uses."""
    from xlmflow.ray_cluster.cluster import local_temp_dir

    return {p for d in ("/tmp/ray", local_temp_dir()) for p in glob.glob(os.path.join(d, "session_2*"))}


def _plain_env(**extra: str) -> dict:
    """No shared Ray or Prefect: a run that got that far would start both (and say so on stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "RAY_ADDRESS"}
    env.pop("XLMFLOW_FAULTS", None)
    return env | {"PREFECT_SERVER_ANALYTICS_ENABLED": "false"} | extra


# ---- credentials in URIs ----


def test_credentials_in_uris_are_refused_before_any_library_sees_them(cli_env, prefect_stack, tmp_path):
    with_slash = "s3://AKIAFAKE:Super/SuperSecret123@bucket/y.jsonl"  # AWS secrets may contain '/'
    p, _ = _run(
        ["run", f"s3://AKIAFAKE:{SECRET}@bucket/x.jsonl", with_slash, SAMPLE]
        + ["--out", f"s3://AKIAFAKE:{SECRET}@bucket/out", "--tasks", "ner"]
        + ["--ner-model", f"s3://AKIAFAKE:{SECRET}@bucket/models/ner"],
        cli_env,
    )
    last = _one_error_line(p, 2)
    assert "configuration error: input 1, input 2, --out, --ner-model: credentials embedded" in last
    assert "AWS_ACCESS_KEY_ID" in last and "AKIAFAKE" not in p.stderr

    from prefect.client.orchestration import get_client

    with prefect_stack.settings(), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(limit=200)
    assert all(SECRET not in json.dumps(r.parameters, default=str) for r in runs)
    logs = {"/tmp/ray/session_latest/logs"}
    try:
        import ray

        logs.add(os.path.join(ray._private.worker.global_worker.node.get_session_dir_path(), "logs"))
    except Exception:  # noqa: BLE001 - the session_latest link is enough when the API moved
        pass
    for path in (f for d in logs for f in glob.glob(os.path.join(d, "**", "*"), recursive=True)):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                assert SECRET.encode() not in f.read(), path


def test_settings_refuse_credentials_without_repeating_them():
    from xlmflow.ray_cluster.registry import make_settings

    with pytest.raises(ConfigError) as err:
        make_settings(
            inputs=["ok.jsonl", f"s3://K:{SECRET}@b/x"],
            out=f"s3://K:{SECRET}@b/o",
            tasks="qe",
            qe_model="https://u:p@h/m",
        )
    msg = str(err.value)
    assert "input 2: credentials embedded" in msg and "out:" in msg and "qe.model:" in msg
    assert SECRET not in msg and "u:p@" not in msg


@pytest.mark.parametrize(
    ("uri", "has"),
    [
        (f"s3://AKIAFAKE:{SECRET}@bucket/x.jsonl", True),
        ("s3://AKIAFAKE:abc/def+ghi@bucket/x", True),
        ("s3://user@bucket/x", True),
        ("https://u:p@host/m", True),
        ("s3://bucket/people@example/x.jsonl", False),
        ("http://host:8080/path@x", False),
        ("/data/a@b.jsonl", False),
        ("xlm-roberta-base", False),
    ],
)
def test_userinfo_detection_and_redaction(uri, has):
    assert has_userinfo(uri) is has
    text = redact(f"cannot open {uri!r}; bucket name 'AKIAFAKE:{SECRET}@bucket' is invalid")
    assert SECRET not in text and "abc/def" not in text and "***@bucket" in text
    if not has:
        assert uri in text


# ---- mapping exceptions to exit codes and messages ----


def _client_error(code: str, op: str = "GetObject", **extra: str) -> Exception:
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": f"{code} happened", **extra}}, op)


def _caused(exc: Exception, cause: Exception) -> Exception:
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    ("exc", "code", "needle"),
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "/out/x.arrow"),
            1,
            "no space left on device while writing /out/x.arrow",
        ),
        (
            _client_error("NoSuchBucket", "PutObject", BucketName="nob"),
            1,
            "bucket nob does not exist or is not reachable",
        ),
        (
            _caused(FileNotFoundError("The specified bucket does not exist"), _client_error("NoSuchBucket")),
            1,
            "bucket outb does",
        ),
        (
            _caused(OSError(errno.EBUSY, "Service Unavailable"), _client_error("SlowDown")),
            1,
            "storage error after retries",
        ),
        (
            _caused(
                FatalError("cannot read input 'x'"),
                _caused(OSError(errno.EBUSY, "busy"), _client_error("503")),
            ),
            1,
            "storage error after retries: cannot read input",
        ),
        (_caused(PermissionError("Access Denied"), _client_error("AccessDenied")), 1, "permission denied"),
        (FatalError("no write access to /o"), 1, "error: no write access to /o"),
        (ValueError("odd"), 1, "unexpected error ValueError: odd; rerun with --debug"),
        (ConfigError("bad option"), 2, "configuration error: bad option"),
        (InputsChangedError("inputs changed"), 3, "error: inputs changed"),
        (KeyboardInterrupt(), 130, "interrupted"),
    ],
)
def test_exceptions_map_to_exit_codes_and_actionable_lines(exc, code, needle):
    got, msg = explain(exc, out="s3://outb/prefix")
    assert got == code and needle in msg, msg
    if code == 1 and "storage" in needle:
        assert "AWS_ENDPOINT_URL" in msg and "resumes" in msg


def test_debug_adds_the_traceback_before_the_one_line(tmp_path, capsys):
    from xlmflow.cli import main

    rc = main(
        [
            "--debug",
            "pairs",
            "make",
            str(tmp_path / "nope.jsonl"),
            "--src-lang",
            "eng_Latn",
            "--out",
            str(tmp_path / "p"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" in err
    assert err.strip().splitlines()[-1].startswith("xlmflow: error: cannot read parallel corpus")


def test_after_the_error_line_only_the_console_is_silenced(tmp_path, capsys):
    """Services that log while draining at exit stay off the terminal, and their logs still reach
    every other handler (Prefect's API handler sends them to the server)."""
    import logging

    from xlmflow.cli import main

    seen: list[str] = []
    other = logging.Handler()
    other.emit = lambda record: seen.append(record.getMessage())
    lg = logging.getLogger("prefect.xlmflow_test_drain")
    lg.propagate = False  # only the two handlers here: others of this process may hold stale streams
    handlers = [other, logging.StreamHandler(sys.stderr)]
    for h in handlers:
        lg.addHandler(h)
    try:
        rc = main(
            ["pairs", "make", str(tmp_path / "nope.jsonl"), "--src-lang", "eng_Latn", "--out", str(tmp_path)]
        )
        lg.warning("draining")
    finally:
        for h in handlers:
            lg.removeHandler(h)
        lg.propagate = True
        logging.disable(logging.NOTSET)
    err = capsys.readouterr().err
    assert rc == 1 and err.strip().splitlines()[-1].startswith("xlmflow: error: cannot read parallel corpus")
    assert "draining" not in err and seen == ["draining"]


def test_a_broken_install_names_the_missing_module(monkeypatch, capsys):
    """The flow commands are not dropped from the CLI when they cannot be imported: the error says why."""
    from xlmflow.cli import main

    monkeypatch.setitem(sys.modules, "xlmflow.flows.deploy", None)  # an import of it raises ImportError
    assert main(["deploy", "--help"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("xlmflow: configuration error: the backfill and deploy commands cannot load")
    assert "module 'xlmflow.flows.deploy'" in last and "pip install" in last


# ---- through the real CLI ----


def test_pickle_only_model_exits_2_before_ray_or_prefect_start(tmp_path):
    model = tmp_path / "pickled"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "pytorch_model.bin").write_bytes(b"not even a pickle")
    sessions = _ray_sessions()
    p, secs = _run(
        ["run", SAMPLE, "--out", str(tmp_path / "o"), "--tasks", "ner", "--ner-model", str(model)],
        _plain_env(),
    )
    last = _one_error_line(p, 2)
    assert "pytorch_model.bin" in last and "safe_serialization=True" in last
    assert "Ray" not in p.stderr and "temporary server" not in p.stderr.lower()
    assert _ray_sessions() == sessions  # no Ray session was created
    assert secs < 20, secs  # the bare CLI start-up; Ray plus a temporary Prefect server take longer


def test_out_at_a_file_exits_2_before_ray_or_prefect_start(tmp_path):
    (tmp_path / "taken").write_text("a file where the output directory should go")
    sessions = _ray_sessions()
    p, _ = _run(["run", SAMPLE, "--out", str(tmp_path / "taken" / "out"), "--tasks", "lid"], _plain_env())
    last = _one_error_line(p, 2)
    assert f"{tmp_path / 'taken'} exists and is not a directory" in last and "choose a directory" in last
    assert _ray_sessions() == sessions  # failed before Ray started


def test_out_inside_an_input_directory_exits_2(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text('{"text": "a document"}\n')
    p, _ = _run(
        ["run", str(tmp_path / "in"), "--out", str(tmp_path / "in" / "out"), "--tasks", "lid"], _plain_env()
    )
    last = _one_error_line(p, 2)
    assert "is inside the input" in last and "would read its outputs as documents" in last


def test_missing_output_bucket_is_named(cli_env, tmp_path):
    p, _ = _run(["run", SAMPLE, "--out", "s3://no-such-bucket-xlmflow/out", "--date", "2026-01-01"], cli_env)
    last = _one_error_line(p, 1)
    assert "bucket no-such-bucket-xlmflow does not exist or is not reachable; create it or fix --out" in last


def test_full_disk_while_sharding_says_so(cli_env, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(full)], capture_output=True
    )
    if mount.returncode:
        pytest.skip(
            f"cannot mount a small tmpfs here (needs root/CAP_SYS_ADMIN): {mount.stderr.decode().strip()}"
        )
    try:
        rows = [json.loads(line) for line in open(SAMPLE, encoding="utf-8")]
        big = tmp_path / "big.jsonl"
        with open(big, "w", encoding="utf-8") as f:  # ~1.4 MB of unique documents for a 512 KiB disk
            for i in range(40):
                for j, r in enumerate(rows):
                    f.write(
                        json.dumps({"id": f"{j}-{i}", "text": f"{r['text']} ({i})"}, ensure_ascii=False)
                        + "\n"
                    )
        p, _ = _run(["run", str(big), "--out", str(full / "out"), "--shard-chars", "50000"], cli_env)
    finally:
        subprocess.run(["umount", "-l", str(full)], check=False)
    last = _one_error_line(p, 1)
    assert f"no space left on device while writing {full / 'out'}/" in last, last  # which disk is full
    assert "choose another --out" in last


class _SlowDownProxy(http.server.BaseHTTPRequestHandler):
    """Forwards to the S3 endpoint, but answers 503 SlowDown to every read of a .jsonl object."""

    protocol_version = "HTTP/1.1"
    upstream: tuple[str, int] = ("127.0.0.1", 0)
    refused: list[str] = []
    methods: tuple[str, ...] = ("GET", "HEAD")

    def log_message(self, *args: object) -> None:
        pass

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.command in self.methods and self.path.split("?")[0].endswith(".jsonl"):
            self.refused.append(f"{self.command} {self.path}")
            xml = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            return self._reply(503, [("Content-Type", "application/xml")], xml)
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        conn.request(
            self.command, self.path, body or None, headers | {"Host": "{}:{}".format(*self.upstream)}
        )
        r = conn.getresponse()
        hop = {"content-length", "transfer-encoding", "connection", "server", "date"}
        data = r.read()
        # a HEAD answer has no body but must keep the object's length
        length = r.getheader("Content-Length") if self.command == "HEAD" else None
        self._reply(r.status, [(k, v) for k, v in r.getheaders() if k.lower() not in hop], data, length)

    def _reply(self, status: int, headers: list, data: bytes, length: str | None = None) -> None:
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", length or str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward


@pytest.mark.parametrize("methods", [("GET", "HEAD"), ("GET",)], ids=["listing-fails", "reads-fail"])
def test_storage_errors_after_retries_are_one_line(cli_env, moto_server, s3_bucket, tmp_path, methods):
    """Whether the input cannot even be listed or only its reads fail, the run fails (exit 1): a storage
    outage is never committed as rejected rows."""
    import boto3

    boto3.client("s3").upload_file(SAMPLE, s3_bucket.removeprefix("s3://"), "in/x.jsonl")
    host, port = moto_server.removeprefix("http://").split(":")
    handler = type(
        "Proxy", (_SlowDownProxy,), {"upstream": (host, int(port)), "refused": [], "methods": methods}
    )
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        # fewer botocore attempts per call (s3fs still retries on top): the outage is as real, just shorter
        env = cli_env | {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.server_address[1]}",
            "AWS_MAX_ATTEMPTS": "2",
        }
        if methods == ("GET",):
            # the files are read by Ray tasks: a Ray of its own, started by the run, gives them the
            # endpoint of this run's environment (the session's Ray workers have the direct one)
            env.pop("RAY_ADDRESS")
        p, _ = _run(["run", f"{s3_bucket}/in/x.jsonl", "--out", str(tmp_path / "o")], env)
    finally:
        proxy.shutdown()
    assert len(handler.refused) > 1, p.stderr[-3000:]  # the clients retried before giving up
    last = _one_error_line(p, 1)
    assert "storage error after retries" in last and "x.jsonl" in last
    assert "AWS_ENDPOINT_URL" in last and "resumes from finished shards" in last
    assert not (tmp_path / "o" / "_manifests").exists()
