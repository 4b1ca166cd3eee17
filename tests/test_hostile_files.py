"""Hostile inputs through the real CLI: a gzip bomb, a file past --max-file-bytes, an over-long .txt.

Each run is a `xlmflow run` subprocess on the session's Ray and Prefect server (`cli_env`); the bomb
test watches the driver's peak RSS (VmHWM) while it runs.
"""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
import time

import pytest

from tasks.collect import read_manifest

CLI = [sys.executable, "-m", "xlmflow.cli", "run"]
DATE = "2026-11-03"


def run_cli(args: list[str], env: dict, timeout: float = 300) -> tuple[subprocess.CompletedProcess, int]:
    """Run `xlmflow run ARGS` to the end; (result, the driver's peak RSS in bytes)."""
    p = subprocess.Popen(
        CLI + args + ["--date", DATE, "--actors", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak, deadline = 0, time.time() + timeout
    # VmHWM is the process's own high-water mark, so polling only has to see it before the exit
    while p.poll() is None and time.time() < deadline:
        try:
            with open(f"/proc/{p.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) * 1024)
        except (FileNotFoundError, ProcessLookupError):
            pass
        time.sleep(0.02)
    if p.poll() is None:
        p.kill()
    out, err = p.communicate()
    return subprocess.CompletedProcess(p.args, p.returncode, out, err), peak


def counts(out: str) -> dict:
    c = read_manifest(out, DATE)["counts"]
    assert c["input_rows"] == c["documents"] + c["rejects"]
    return c


@pytest.mark.slow
def test_gzip_bomb_line_is_skipped_in_bounded_memory(tmp_path, cli_env):
    # gzip is multi-member: compress 16 MiB of a JSON string body once and repeat that member, so a
    # ~13 MB file holds one 2 GiB line (a repeating 4 KiB pattern inflates faster than one letter)
    rng = random.Random(0)
    block = bytes(rng.choice(b"abcdefghij ") for _ in range(4096)) * 4096
    member = gzip.compress(block, compresslevel=6)
    bomb = tmp_path / "bomb.jsonl.gz"
    with open(bomb, "wb") as f:
        f.write(gzip.compress(b'{"id": "before", "text": "Ein normaler Satz davor."}\n{"text": "'))
        for _ in range(128):
            f.write(member)
        f.write(gzip.compress(b'"}\n{"id": "after", "text": "Ein normaler Satz danach."}\n'))
    assert 128 * len(block) >= 2 * 1024**3

    out = str(tmp_path / "out")
    t0 = time.perf_counter()
    p, peak = run_cli([str(bomb), "--out", out], cli_env)
    took = time.perf_counter() - t0
    print(
        f"bomb: {bomb.stat().st_size / 1e6:.1f} MB -> 2 GiB line; driver peak RSS {peak / 2**20:.0f} MiB, {took:.1f}s"
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert peak < 1024**3, f"driver peak RSS {peak / 2**20:.0f} MiB"
    c = counts(out)
    assert (c["input_rows"], c["documents"], c["rejects"]) == (3, 2, 1)
    assert c["rejects_by_reason"] == {"too_long": 1}


@pytest.mark.slow
def test_max_file_bytes_and_an_over_long_txt(tmp_path, cli_env):
    inputs = tmp_path / "in"
    inputs.mkdir()
    lines = [json.dumps({"id": f"r{i:02d}", "text": f"Satz Nummer {i:02d}."}) + "\n" for i in range(40)]
    assert len(set(map(len, lines))) == 1
    (inputs / "a.jsonl").write_text("".join(lines))
    (inputs / "big.txt").write_text("Ein langes Dokument. " * 15)  # 315 bytes: over 200, within the cut
    (inputs / "small.txt").write_text("Ein kurzes Dokument.")
    cut = 10 * len(lines[0]) + 5  # inside the 11th line
    out = str(tmp_path / "out")
    args = [str(inputs), "--out", out, "--max-file-bytes", str(cut), "--max-record-bytes", "200"]
    p, _ = run_cli(args, cli_env)
    assert p.returncode == 0, p.stderr[-3000:]
    c = counts(out)
    # a.jsonl: 10 rows kept + 1 file_too_large; big.txt: 1 too_long; small.txt: 1 kept
    assert (c["input_rows"], c["documents"], c["rejects"]) == (13, 11, 2)
    assert c["rejects_by_reason"] == {"file_too_large": 1, "too_long": 1}

    from tests.conftest import duck

    got = (
        duck(out, "rejects", DATE)
        .sql("select regexp_extract(source, '[^/]+$'), source_row, reason, detail from rejects order by 1")
        .fetchall()
    )
    assert [g[:3] for g in got] == [("a.jsonl", 11, "file_too_large"), ("big.txt", 0, "too_long")]
    assert f"max_file_bytes={cut}" in got[0][3] and "--max-file-bytes" in got[0][3]
    assert "--max-record-bytes" in got[1][3]


@pytest.mark.slow
def test_driver_memory_does_not_grow_with_the_partition(tmp_path, cli_env):
    """The driver plans and commits; rows, rejects and dedup state live in Ray tasks and staging. Two
    partitions, 5k and 150k input rows (the larger mostly duplicates and bad rows, so the models have
    about as much to do): the driver's peak RSS must not follow the row count."""
    peaks, counted = {}, {}
    for n in (5_000, 150_000):
        d = tmp_path / f"in{n}"
        d.mkdir()
        with open(d / "docs.jsonl", "w") as f:
            for i in range(n):
                if i < 5_000:
                    f.write(json.dumps({"id": f"d{i}", "text": f"Satz Nummer {i}, ein kurzer Text."}) + "\n")
                elif i % 2:
                    f.write(
                        json.dumps({"id": f"x{i}", "text": f"Satz Nummer {i % 5_000}, ein kurzer Text."})
                        + "\n"
                    )
                else:
                    f.write(json.dumps({"id": f"e{i}", "text": "   "}) + "\n")
        out = str(tmp_path / f"out{n}")
        p, peaks[n] = run_cli([str(d), "--out", out, "--split-mb", "1"], cli_env)
        assert p.returncode == 0, p.stderr[-3000:]
        counted[n] = counts(out)
    print("driver peak RSS MiB by input rows:", {n: round(v / 2**20) for n, v in peaks.items()})
    assert counted[150_000]["documents"] == counted[5_000]["documents"] == 5_000
    assert counted[150_000]["rejects_by_reason"] == {"duplicate": 72_500, "empty_text": 72_500}
    # 30x the rows; the sequential driver grew ~1 KB per row (>100 MiB here)
    assert peaks[150_000] - peaks[5_000] < 25 * 2**20, peaks
