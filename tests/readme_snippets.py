"""The README's reading snippets, as the tests run them (so the README cannot drift from what works)."""

from __future__ import annotations

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = "### Reading the outputs"


def duckdb_delta_extension() -> str:
    """The `delta` extension file that the `duckdb-extension-delta` package ships for this DuckDB."""
    import duckdb
    import duckdb_extension_delta

    base = os.path.dirname(duckdb_extension_delta.__file__)
    return os.path.join(base, "extensions", f"v{duckdb.__version__}", "delta.duckdb_extension")


def reading_snippets() -> dict[str, str]:
    """The Python blocks of the README's reading section, keyed by their first comment line's first word
    (`setup`, `deltalake`, `polars`, `duckdb`, `xlmflow`)."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    start = text.index(SECTION)
    end = re.compile(r"^#{2,3} ", re.M).search(text, start + len(SECTION)).start()  # the next heading
    blocks = re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)
    return {b.split("\n", 1)[0].lstrip("# ").split()[0].lower().rstrip(":"): b for b in blocks}


def reading_script(out: str, date: str, engines: tuple[str, ...], after: dict[str, str] | None = None) -> str:
    """One script of the setup block (its OUT and DATE replaced) and the blocks of `engines`, each
    followed by the line `after` gives for it."""
    blocks = reading_snippets()
    setup = re.sub(r"^OUT, DATE = .*$", f"OUT, DATE = {out!r}, {date!r}", blocks["setup"], flags=re.M)
    return "\n".join([setup, *(f"{blocks[e]}\n{(after or {}).get(e, '')}" for e in engines)])
