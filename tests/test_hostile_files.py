"""Hostile inputs through the real CLI: a gzip bomb, a Parquet dictionary bomb, a file past
--max-file-bytes, an over-long .txt.

Each run is a `xlmflow run` subprocess on the session's Prefect server (`cli_env`). The gzip bomb test
watches the driver's peak RSS (VmHWM) on the session's Ray; the Parquet bomb test lets the CLI start
its own Ray and watches the RSS of its whole process tree, the Ray workers that read the file included.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from xlmflow import reaper
from xlmflow.manifest import read_manifest

CLI = [sys.executable, "-m", "xlmflow.cli", "run"]
DATE = "2026-11-03"


def _start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        CLI + args + ["--date", DATE, "--actors", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_cli(args: list[str], env: dict, timeout: float = 300) -> tuple[subprocess.CompletedProcess, int]:
    """Run `xlmflow run ARGS` to the end; (result, the driver's peak RSS in bytes)."""
    p = _start(args, env)
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


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def run_cli_tree(
    args: list[str], env: dict, kill_at: int, timeout: float = 300
) -> tuple[subprocess.CompletedProcess, int]:
    """Run `xlmflow run ARGS` on a Ray of its own; (result, the peak of the summed RSS of the CLI and
    all its descendants, sampled every 50 ms). Past `kill_at` bytes the whole tree is killed, so a
    regression fails the test instead of taking the machine's memory."""
    env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
    p = _start(args, env)
    tree, peak, listed, deadline = {p.pid}, 0, 0.0, time.time() + timeout
    while p.poll() is None and time.time() < deadline:
        if time.time() - listed > 0.5:  # the tree (a /proc scan) every 0.5 s, the RSS every 50 ms
            tree.update(reaper._descendants(reaper._table(), tree))
            listed = time.time()
        peak = max(peak, sum(_rss(pid) for pid in tree))
        if peak > kill_at:
            break
        time.sleep(0.05)
    if p.poll() is None:
        for pid in sorted(tree, reverse=True):  # only the processes of this run, by pid
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
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


def parquet_bomb(path, value_bytes: int, rows: int = 20_000) -> None:  # noqa: ANN001
    """One row group of `rows` rows that all hold one `value_bytes` string, dictionary-encoded and
    compressed: a file of a few hundred bytes whose metadata says ~value_bytes and which decodes to
    rows x value_bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    value = ("Bombe" * (value_bytes // 5 + 1))[:value_bytes]
    text = pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), pa.array([value]))
    # no stored Arrow schema: readers see a plain string column, as for a file from any other writer
    pq.write_table(
        pa.table({"text": text}), path, use_dictionary=True, compression="zstd", store_schema=False
    )


@pytest.mark.slow
def test_parquet_dictionary_bombs_stay_bounded_in_the_whole_process_tree(tmp_path, cli_env):
    """20k rows of one 200 KB value (4 GB decoded; the run took 10 GB) and of one 120 KB value (2.4 GB):
    rows are decoded a few at a time and measured, so 200 KB rows are too_long at a 150 KB record
    limit, and the 120 KB ones are read and deduplicated with every buffer bounded by bytes."""
    import pyarrow.parquet as pq

    inputs = tmp_path / "in"
    inputs.mkdir()
    parquet_bomb(inputs / "a200.parquet", 200_000)
    parquet_bomb(inputs / "b120.parquet", 120_000)
    meta = pq.ParquetFile(inputs / "a200.parquet").metadata
    assert meta.row_group(0).total_byte_size < 250_000 and (inputs / "a200.parquet").stat().st_size < 10_000

    out = str(tmp_path / "out")
    t0 = time.perf_counter()
    args = [str(inputs), "--out", out, "--max-record-bytes", "150000"]
    bound = 3 * 1024**3  # measured: ~1.6 GiB; the code that buffered rows by count alone passed it in seconds
    p, peak = run_cli_tree(args, cli_env, kill_at=bound)
    took = time.perf_counter() - t0
    print(f"parquet bombs: process tree peak RSS {peak / 2**20:.0f} MiB, {took:.1f}s")
    assert peak <= bound, f"process tree peak RSS {peak / 2**20:.0f} MiB"
    assert p.returncode == 0, p.stderr[-3000:]
    c = counts(out)
    assert (c["input_rows"], c["documents"]) == (40_000, 1)
    assert c["rejects_by_reason"] == {"duplicate": 19_999, "too_long": 20_000}

    from tests.conftest import duck

    ((row, detail, raw),) = (
        duck(out, "rejects", DATE)
        .sql("select source_row, detail, raw from rejects where reason = 'too_long' and source_row = 7")
        .fetchall()
    )
    assert "200000 bytes decoded" in detail and "max_record_bytes=150000" in detail
    assert raw.startswith('{"text": "BombeBombe')


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
