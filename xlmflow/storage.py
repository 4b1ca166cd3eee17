"""Local and s3:// paths behind one small API (fsspec), with atomic whole-object writes.

S3 has no rename but each PUT is atomic; locally we write a temp file and os.replace it. Either way a
reader sees an object whole or not at all, which the commit protocol (manifest written last) relies on.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
import time
import uuid
from typing import Any

import fsspec
import pyarrow as pa

from xlmflow.errors import ConfigError, FatalError

# a local write goes to `<path>.tmp-<8 hex>` first; only that exact shape counts as a leftover
_TMP_NAME = re.compile(r"\.tmp-[0-9a-f]{8}$")


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def fs_for(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and the path inside it. s3fs takes endpoint/credentials from the AWS env/config."""
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"cannot open {uri!r}: {exc}") from exc
    return fs, path


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *[p.strip("/") for p in parts]])


def canonical(uri: str) -> str:
    """One spelling of a location, for comparing them: a remote URI without its trailing slash, a local
    path absolute (`~` and a `file://` prefix resolved)."""
    if is_remote(uri):
        return uri.rstrip("/")
    return os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))


def check_output_root(uri: str) -> None:
    """A ConfigError if a local output root cannot be a directory we write to: its nearest existing
    ancestor must be a writable directory (the missing rest is created). Remote roots pass."""
    if is_remote(uri):
        return
    path = canonical(uri)
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    why = (
        f"{path} exists and is not a directory"
        if not os.path.isdir(path)
        else f"{path} is not writable by this user"
        if not os.access(path, os.W_OK | os.X_OK)
        else None
    )
    if why:
        raise ConfigError(f"--out {uri!r}: {why}; choose a directory (created if missing) or an s3:// URI")


def fresh(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """fs and path with no cached listing for the path: s3fs answers exists/size from a directory
    listing it cached earlier, so a manifest replaced since would read as missing or truncated."""
    fs, path = fs_for(uri)
    if is_remote(uri):
        fs.invalidate_cache(path)
    return fs, path


def exists(uri: str) -> bool:
    fs, path = fresh(uri)
    return fs.exists(path)


def read_bytes(uri: str) -> bytes:
    fs, path = fresh(uri)
    if is_remote(uri):
        # one GET: a buffered file reads in ranges pinned to the first ETag and fails (FileExpired)
        # when a writer replaces the object in between, as a manifest is replaced by every commit
        return fs.cat_file(path)
    with fs.open(path, "rb") as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Write one object atomically (temp + rename locally, a single PUT on S3)."""
    fs, path = fs_for(uri)
    try:
        if is_remote(uri):
            try:
                fs.pipe_file(path, data)
            except Exception:
                if not _landed(uri, data):
                    raise
            return
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with naming_full_disk(uri), open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            # a full disk, a signal or a crash mid-write must not leave a partial file behind
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except PermissionError as exc:
        raise FatalError(
            f"no write access to {uri}: {exc}; choose another --out or fix its permissions"
        ) from exc


def _landed(uri: str, data: bytes, attempts: int = 3) -> bool:
    """Whether the object at `uri` holds `data` now: a PUT whose answer was lost may have landed, and
    the client's error then says nothing about the object. An unreadable object counts as not landed."""
    for attempt in range(attempts):
        try:
            return read_bytes(uri) == data
        except FileNotFoundError:
            return False
        except Exception:  # noqa: BLE001 - the store is flaky right now: look again, boundedly
            time.sleep(0.5 * 2**attempt)
    return False


@contextlib.contextmanager
def naming_full_disk(uri: str):  # noqa: ANN201
    """Re-raise a full disk's error as one that names `uri` (for s3://, the local temp folder its
    upload is written to first): Python's and pyarrow's write errors carry no file name, and the user
    needs to know which disk filled up."""
    try:
        yield
    except OSError as exc:
        full = exc.errno == errno.ENOSPC or "No space left on device" in str(exc)
        if full and not exc.filename:
            where = tempfile.gettempdir() if is_remote(uri) else uri
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), where) from exc
        raise


@contextlib.contextmanager
def writing(uri: str):  # noqa: ANN201
    """A local path to write `uri` through, made visible whole when the block ends: locally the temp
    file is renamed into place, on S3 it is uploaded in one PUT. Nothing is left on failure."""
    fs, path = fs_for(uri)
    if is_remote(uri):
        fd, tmp = tempfile.mkstemp(prefix="xlmflow-")
    else:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.close(fd)
    try:
        with naming_full_disk(uri):
            yield tmp
            if is_remote(uri):
                fs.put_file(tmp, path)
            else:
                os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def open_input_file(uri: str):  # noqa: ANN201
    """A random-access pyarrow file of `uri` (ranged reads; ranged GETs on S3). Not a memory map: its
    pages would count in the reader's resident memory however little of the file it uses at a time."""
    fs, path = fresh(uri)  # written by another process since this one last listed the prefix
    if not is_remote(uri):
        return pa.OSFile(path)
    return pa.PythonFile(fs.open(path, "rb"), mode="r")


def remove_stale_tmp(prefix_uri: str) -> int:
    """Delete leftover `*.tmp-*` files of local writes under a prefix; returns how many were removed.

    A writer killed between creating its temp file and renaming it leaves the temp file behind.
    Only call this while holding the prefix exclusively (the partition's lock): the temp file of a
    writer still running is indistinguishable from a stale one. A no-op on s3://, where each PUT is
    atomic and leaves nothing partial.
    """
    if is_remote(prefix_uri):
        return 0
    _, root = fs_for(prefix_uri)
    removed = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if _TMP_NAME.search(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
    return removed


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def list_files(uri: str) -> list[str]:
    """Files under a prefix (recursive), as full URIs, sorted; [] when the prefix does not exist."""
    fs, path = fs_for(uri)
    if not fs.exists(path):
        return []
    proto = uri.split("://", 1)[0] + "://" if is_remote(uri) else ""
    fs.invalidate_cache()
    return sorted(proto + p for p in fs.find(path))


def remove(uris: list[str]) -> None:
    for u in uris:
        fs, path = fs_for(u)
        try:
            fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass


def write_table_ipc(uri: str, table) -> None:  # noqa: ANN001 - pyarrow is imported lazily

    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    write_bytes(uri, sink.getvalue().to_pybytes())


def read_table_ipc(uri: str):  # noqa: ANN201

    return pa.ipc.open_file(pa.BufferReader(read_bytes(uri))).read_all()
