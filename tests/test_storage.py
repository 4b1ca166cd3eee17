"""Local writes leave no partial files: on a really full disk, and after a writer was killed."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from xlmflow import storage


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs: a real filesystem that runs out of space (needs root and mount rights)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and mount rights): {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_raises_enospc_and_leaves_no_temp_file(tiny_disk):
    target = str(tiny_disk / "part" / "big.bin")
    storage.write_bytes(str(tiny_disk / "small.bin"), b"x" * 1000)  # fits: the disk itself works

    with pytest.raises(OSError) as info:
        storage.write_bytes(target, os.urandom(1024 * 1024))

    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == target  # the message can say which disk is full
    assert os.listdir(tiny_disk / "part") == []
    assert sorted(os.listdir(tiny_disk)) == ["part", "small.bin"]

    # a file written through a local path (pyarrow's writers): the same, its error names it too
    import pyarrow as pa

    streamed = str(tiny_disk / "part" / "streamed.arrow")
    with pytest.raises(OSError) as info, storage.writing(streamed) as tmp, pa.OSFile(tmp, "wb") as f:
        f.write(os.urandom(1024 * 1024))
    assert info.value.errno == errno.ENOSPC and info.value.filename == streamed
    assert os.listdir(tiny_disk / "part") == []


def test_interrupted_write_removes_its_temp_file(tmp_path, monkeypatch):
    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        storage.write_bytes(str(tmp_path / "a.bin"), b"data")
    assert os.listdir(tmp_path) == []


def test_remove_stale_tmp_keeps_real_files(tmp_path):
    part = tmp_path / "_staging" / "date=2026-11-04" / "abc"
    part.mkdir(parents=True)
    real = ["shard-0.arrow", "_SUCCESS.json", "notes.tmp-later.txt", "x.tmp-1234"]
    stale = ["shard-1.arrow.tmp-0a1b2c3d", "_SUCCESS.json.tmp-ffffffff"]
    for name in real + stale:
        (part / name).write_bytes(b"x")
    (tmp_path / "top.parquet.tmp-deadbeef").write_bytes(b"x")

    assert storage.remove_stale_tmp(str(tmp_path)) == 3
    assert sorted(os.listdir(part)) == sorted(real)
    assert os.listdir(tmp_path) == ["_staging"]
    assert storage.remove_stale_tmp(str(tmp_path)) == 0
    assert storage.remove_stale_tmp(str(tmp_path / "missing")) == 0


def test_remove_stale_tmp_is_a_no_op_on_s3():
    assert storage.remove_stale_tmp("s3://bucket/out/_staging/date=2026-11-04") == 0


def test_one_spelling_of_an_output_root_in_settings_and_storage(tmp_path, monkeypatch):
    """`file://`, `~`, relative paths and s3:// URIs: the settings' `out` is storage's canonical form."""
    from xlmflow.ray_cluster.registry import make_job

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = {
        f"file://{tmp_path}/out/": f"{tmp_path}/out",
        "~/out": f"{tmp_path}/home/out",
        "rel/out/": f"{tmp_path}/rel/out",
        "./rel/../out": f"{tmp_path}/out",
        "s3://bucket/prefix/": "s3://bucket/prefix",
    }
    got = {uri: (storage.canonical(uri), make_job(out=uri).out) for uri in expected}
    assert got == {uri: (want, want) for uri, want in expected.items()}
