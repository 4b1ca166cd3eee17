"""The input files of a partition: what the user's paths, directories and globs name, local or s3://.

Hidden and underscore files below an input directory (.crc, _SUCCESS, .git/, _delta_log/) and files of
an unsupported type are skipped with a warning; so are local paths that are not regular files (FIFOs,
devices, broken links). An input that matches nothing, or cannot be listed, is a FatalError. An output
root inside an input is a ConfigError (later runs would read their own outputs).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Sequence

from xlmflow import storage
from xlmflow.errors import ConfigError, FatalError
from xlmflow.storage import fs_for, is_remote
from xlmflow.tasks.readers import SUPPORTED, format_of

log = logging.getLogger(__name__)


def expand_inputs(inputs: Sequence[str]) -> list[str]:
    """Files, directories (recursive) and globs, local or s3://, as sorted unique file URIs."""
    found: set[str] = set()
    for inp in inputs:
        fs, path = fs_for(inp)
        proto = inp.split("://", 1)[0] + "://" if is_remote(inp) else ""
        try:
            fs.invalidate_cache()
            if any(c in inp for c in "*?["):
                tops = fs.glob(path)
            elif fs.exists(path):
                tops = [path]
            else:
                raise FatalError(f"input {inp!r} matched no files; check the path/glob")
            files, skipped = [], []
            for top in sorted(tops):
                if not fs.isdir(top):
                    files.append(top)
                    continue
                for p in fs.find(top):
                    # hidden/underscore files and folders below the input (.crc, _SUCCESS, .git/,
                    # _delta_log/) are not data, as in Spark and Hadoop
                    below = p[len(top.rstrip("/")) + 1 :].split("/")
                    (skipped if any(c.startswith((".", "_")) for c in below) else files).append(p)
        except FatalError:
            raise
        except (OSError, ValueError) as exc:
            raise FatalError(
                f"cannot read input {inp!r}: {exc}; check the path and your access to it"
            ) from exc
        if files == [path] and format_of(path) is None:  # a file the user named explicitly
            raise FatalError(f"input {inp!r} is not a supported file type; supported: {SUPPORTED}")
        if not proto:
            special = {p: why for p in files if (why := _not_a_file(p))}
            if files == [path] and special:
                raise FatalError(f"input {inp!r} cannot be read: {special[path]}")
            if special:
                eg = "; ".join(f"{p}: {why}" for p, why in list(special.items())[:3])
                log.warning(
                    "input %r: skipped %d paths that are not files to read, e.g. %s", inp, len(special), eg
                )
            files = [p for p in files if p not in special]
        ok = [proto + p for p in files if format_of(p) is not None]
        skipped += [p for p in files if format_of(p) is None]
        if skipped:
            log.warning(
                "input %r: skipped %d unsupported/hidden files, e.g. %s", inp, len(skipped), skipped[:3]
            )
        if not ok:
            raise FatalError(f"input {inp!r} matched no files; check the path/glob (supported: {SUPPORTED})")
        found.update(ok)
    return sorted(found)


def check_output_apart(inputs: Sequence[str], out: str) -> None:
    """A ConfigError if the output root is inside (or is) an input directory, or under the folder of a
    recursive (`**`) glob: later runs would read their own outputs (the tables' Parquet files) as input
    documents. An output beside or above the inputs is fine: nothing reads it."""
    root = storage.canonical(out)
    for inp in inputs:
        if any(c in inp for c in "*?["):
            if "**" not in inp:
                continue  # a one-level glob matches no file inside the output's folders
            fixed = inp[: min(inp.index(c) for c in "*?[" if c in inp)]  # the folder the glob starts in
            inp = (fixed.rsplit("/", 1)[0] or "/") if "/" in fixed else "."
        top = storage.canonical(inp)
        if root == top or root.startswith(top.rstrip("/") + "/"):
            raise ConfigError(
                f"--out {out!r} is inside the input {inp!r}, so later runs would read its outputs as "
                "documents; put the output outside the input directories"
            )


def _not_a_file(path: str) -> str | None:
    """Why a local path found among the inputs is not a file to read, or None. Opening a FIFO blocks until
    something writes to it, a device never ends, and a symlink loop or a dangling link fails to open:
    none is data, so they are skipped, with a warning, like hidden files."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return f"{exc.strerror or exc} (a broken or looping symlink?)"
    if stat.S_ISREG(mode):
        return None
    kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device or other"
    return f"{kind}, not a regular file"
