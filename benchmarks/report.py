"""What the benchmark scripts share when they write their results."""

from __future__ import annotations

import contextlib
import platform
import sys


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    return cpu


def emit(lines: list[str], path: str | None) -> None:
    """Write the markdown report to `path` (saying so on stderr), or print it."""
    text = "\n".join(lines) + "\n"
    if path:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {path}", file=sys.stderr)
    else:
        print(text, end="")
