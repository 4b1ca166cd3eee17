"""The floors are enforced: import-linter's contracts hold on the tree and break on a wrong import."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "lint_imports.py"


def _lint(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_the_tree_keeps_every_contract():
    res = _lint()
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 kept, 0 broken" in res.stdout


@pytest.mark.parametrize(
    ("extra", "broken"),
    [
        # the core imports a flow: an upward import
        (
            "xlmflow/storage.py:import xlmflow.flows.corpus",
            "xlmflow.storage is not allowed to import xlmflow.flows",
        ),
        # the Ray side imports a task
        (
            "ray_cluster/pool.py:import xlmflow.tasks.write",
            "xlmflow.ray_cluster is not allowed to import xlmflow.tasks",
        ),
        # two tasks import each other
        ("tasks/staged.py:import xlmflow.tasks.write", "No cycles are allowed in xlmflow.tasks"),
    ],
)
def test_a_wrong_import_breaks_a_contract(extra, broken):
    res = _lint("--extra", extra)
    assert res.returncode != 0
    assert broken in res.stdout, res.stdout


def test_every_package_folder_installs_under_xlmflow():
    """pyproject names each package (package-dir maps the folders): a folder left out would be missing
    from a built wheel, although an editable install still finds it."""
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = conf["package-dir"]
    folders = {
        str(init.parent.relative_to(ROOT))
        for top in ("xlmflow", *mapped.values())
        for init in (ROOT / top).rglob("__init__.py")
    }
    listed = set()
    for pkg in conf["packages"]:
        head = max((k for k in mapped if pkg == k or pkg.startswith(k + ".")), key=len)
        listed.add("/".join([mapped[head], *pkg[len(head) :].strip(".").split(".")]).rstrip("/"))
    assert listed == folders
