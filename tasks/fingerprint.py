"""What the inputs of a partition looked like when it was committed: path, size and ETag or mtime.

A rerun of a committed partition compares the inputs with the manifest's fingerprint, so a file that
arrived late, changed or vanished is reported (exit 3) instead of being silently ignored.
"""

from __future__ import annotations

from collections.abc import Sequence

from xlmflow import storage
from xlmflow.errors import FatalError
from xlmflow.tasks.inputs import expand_inputs


def fingerprint(files: Sequence[str]) -> list[dict]:
    """One entry per input file URI, sorted by path."""
    out = []
    for uri in sorted(files):
        fs, path = storage.fs_for(uri)
        info = fs.info(path)
        entry: dict = {"path": uri, "size": int(info.get("size") or 0)}
        etag = info.get("ETag") or info.get("etag")
        if etag:
            entry["etag"] = str(etag).strip('"')
        else:
            entry["mtime"] = round(float(info.get("mtime") or info.get("created") or 0), 3)
        out.append(entry)
    return out


def current(inputs: Sequence[str]) -> list[dict]:
    """The fingerprint of the inputs as they are now; [] when they match no files any more."""
    try:
        files = expand_inputs(inputs)
    except FatalError:
        return []
    return fingerprint(files)


def changes(old: list[dict] | None, new: list[dict]) -> list[str]:
    """Human-readable differences ('added X', 'removed X', 'changed X (size a -> b)'); [] if the same.

    A manifest written before fingerprints existed (old is None) is taken as unchanged.
    """
    if old is None:
        return []
    before, after = {e["path"]: e for e in old}, {e["path"]: e for e in new}
    diff = [f"added {p}" for p in sorted(after.keys() - before.keys())]
    diff += [f"removed {p}" for p in sorted(before.keys() - after.keys())]
    for p in sorted(before.keys() & after.keys()):
        a, b = before[p], after[p]
        if a != b:
            what = [
                f"{k} {a.get(k)} -> {b.get(k)}" for k in ("size", "etag", "mtime") if a.get(k) != b.get(k)
            ]
            diff.append(f"changed {p} ({', '.join(what)})")
    return diff
