"""Check the import-linter contracts in pyproject.toml (floors import only downward, no cycles).

The repository keeps flows/, tasks/ and ray_cluster/ at its top and installs them as xlmflow.flows,
xlmflow.tasks and xlmflow.ray_cluster (package-dir). import-linter reads a package from one directory,
so this builds that directory as links (xlmflow/*.py plus the three folders) and runs `lint-imports` on it.

    python scripts/lint_imports.py                # what CI runs
    python scripts/lint_imports.py --extra F:LINE # also add LINE to module file F first (a self-test)
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
MAPPED = {"flows": "flows", "tasks": "tasks", "ray_cluster": "ray_cluster"}  # xlmflow.<key> -> folder


def build_view(dest: pathlib.Path) -> pathlib.Path:
    pkg = dest / "xlmflow"
    pkg.mkdir(parents=True)
    for f in (ROOT / "xlmflow").glob("*.py"):
        (pkg / f.name).symlink_to(f)
    for name, folder in MAPPED.items():
        (pkg / name).symlink_to(ROOT / folder, target_is_directory=True)
    return pkg


def add_line(view: pathlib.Path, spec: str) -> None:
    """Replace one linked module by a copy with LINE appended (to see a contract fail)."""
    rel, line = spec.split(":", 1)
    parts = pathlib.Path(rel).parts
    if parts[0] in MAPPED:  # a file under a mapped folder: copy that folder, then edit the copy
        (view / parts[0]).unlink()
        shutil.copytree(ROOT / MAPPED[parts[0]], view / parts[0])
        target = view.joinpath(*parts)
    else:
        target = view / pathlib.Path(*parts[1:])
        target.unlink()
        shutil.copy(ROOT / rel, target)
    target.write_text(target.read_text() + "\n" + line + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extra", help="FILE:LINE, e.g. xlmflow/storage.py:'import xlmflow.flows.corpus'")
    args = ap.parse_args(argv)
    exe = pathlib.Path(sys.executable).with_name("lint-imports")
    with tempfile.TemporaryDirectory(prefix="xlmflow-layers-") as tmp:
        view = build_view(pathlib.Path(tmp))
        if args.extra:
            add_line(view, args.extra)
        env = {**os.environ, "PYTHONPATH": tmp}
        cmd = [str(exe), str(ROOT / "pyproject.toml"), "--no-cache"]
        return subprocess.run(cmd, env=env, cwd=tmp).returncode


if __name__ == "__main__":
    sys.exit(main())
