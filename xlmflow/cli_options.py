"""Command-line options generated from the settings models, so no option list is written twice.

Every `JobSettings` field becomes `--field-name` (byte sizes marked `cli_mb` become `--name-mb`), and
every option of every registered processor type becomes `--TYPE-OPTION` (for the instance named like
its type, as `--tasks` makes them) and `--NAME.OPTION` for instances declared with `--proc NAME=TYPE`.
"""

from __future__ import annotations

import argparse
import re
import types
import typing
from typing import Any, Literal

from pydantic.fields import FieldInfo

from xlmflow.errors import ConfigError
from xlmflow.ray_cluster.processors.base import registry
from xlmflow.settings import JobSettings

# fields that a command sets itself (positional inputs, --out), builds from several options, or that
# are no input (`resolved`: filled in from the processor registry)
_OWN = {"out", "processors", "resolved"}
_PROC_RE = re.compile(r"^--proc(?:=(.*))?$")


def _kind(annotation: Any) -> tuple[Any, tuple | None]:
    """(scalar type, choices) of a field annotation such as `int | None` or `Literal["a", "b"]`."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in args if a is not type(None))
        args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Literal:
        return str, tuple(args)
    return annotation, None


def _add(group: argparse._ArgumentGroup, flag: str, dest: str, f: FieldInfo, default_note: str = "") -> None:
    kind, choices = _kind(f.annotation)
    help_ = (f.description or "").rstrip(".")
    extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
    if extra.get("cli_mb"):
        flag, kind = re.sub(r"-bytes$", "-mb", flag), float
        help_ += f" (in MB; default {f.default / 2**20:g})"
    elif default_note:
        help_ += f" ({default_note})"
    elif f.default is not None and kind is not bool and not f.is_required():
        help_ += f" (default {f.default})"
    if kind is bool:
        group.add_argument(flag, dest=dest, action="store_true", default=None, help=help_)
    else:
        metavar = None if choices else _metavar(flag, f, kind, extra)
        group.add_argument(
            flag,
            dest=dest,
            type=kind if kind in (int, float) else str,
            choices=choices,
            default=None,
            metavar=metavar,
            help=help_,
        )


def _metavar(flag: str, f: FieldInfo, kind: Any, extra: dict) -> str:
    """What the help shows for an option's value: its unit or kind, not a word of its name."""
    if extra.get("metavar"):
        return extra["metavar"]
    if extra.get("cli_mb"):
        return "MB"
    if kind is int:
        return "N"
    if kind is float:
        text = f"{flag} {f.description or ''}".lower()
        return "SECONDS" if "second" in text or "timeout" in text or "ttl" in text else "FRACTION"
    word = flag.rsplit(".", 1)[-1].lstrip("-").split("-")[-1]  # MODEL, ADDRESS, LANG, ...
    return {"cache": "DIR"}.get(word, word.upper())


def add_job_options(parser: argparse.ArgumentParser, argv: list[str] | None) -> None:
    """Every JobSettings field and processor option as an option of `parser` (dests `job__*`/`proc__*`)."""
    g = parser.add_argument_group("run settings")
    for name, f in JobSettings.model_fields.items():
        if name not in _OWN:
            _add(g, "--" + name.replace("_", "-"), f"job__{name}", f)
    reg = registry()
    p = parser.add_argument_group(
        "processors",
        "--tasks runs one instance per type, named like the type; --proc NAME=TYPE adds a named instance "
        "whose options are --NAME.OPTION (e.g. --proc acronyms=ner --acronyms.model ./ckpt)",
    )
    p.add_argument(
        "--tasks",
        dest="job__tasks",
        default=None,
        metavar="LIST",
        help=f"comma list of processor types: {', '.join(sorted(reg))} (default: lid)",
    )
    p.add_argument(
        "--proc",
        dest="job__proc",
        action="append",
        default=[],
        metavar="NAME=TYPE",
        help="a named processor instance (repeatable)",
    )
    for t, cls in sorted(reg.items()):
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        gt = parser.add_argument_group(f"processor {t}", doc or None)
        for opt, f in cls.Options.model_fields.items():
            _add(gt, f"--{t}-{opt.replace('_', '-')}", f"proc__{t}__{opt}", f)
    for name, t in named_instances(argv or []):
        cls = reg.get(t)
        if cls is None:
            continue  # reported by the settings validation, with the list of types
        gi = parser.add_argument_group(f"instance {name} ({t})")
        for opt, f in cls.Options.model_fields.items():
            _add(gi, f"--{name}.{opt.replace('_', '-')}", f"inst__{name}__{opt}", f)


def named_instances(argv: list[str]) -> list[tuple[str, str]]:
    """(name, type) of every `--proc NAME=TYPE` in argv, before argparse sees it."""
    found = []
    for i, arg in enumerate(argv):
        m = _PROC_RE.match(arg)
        if not m:
            continue
        value = m.group(1) if m.group(1) is not None else (argv[i + 1] if i + 1 < len(argv) else "")
        name, sep, t = value.partition("=")
        if sep:
            found.append((name.strip(), t.strip()))
    return found


def job_kwargs(ns: argparse.Namespace) -> dict:
    """The JobSettings input (shorthand included) given by the parsed options; unset options are left out."""
    kw: dict[str, Any] = {}
    inst: dict[str, dict] = {}
    for dest, value in vars(ns).items():
        if value is None or value == []:
            continue
        if dest.startswith("job__"):
            kw[dest[5:]] = value
        elif dest.startswith("proc__"):
            t, opt = dest[6:].split("__", 1)
            kw[f"{t}_{opt}"] = value
        elif dest.startswith("inst__"):
            name, opt = dest[6:].split("__", 1)
            inst.setdefault(name, {})[opt] = value
    for name in ("split_bytes", "target_file_bytes"):  # given in MB
        if name in kw:
            kw[name] = max(1, int(kw[name] * 1024 * 1024))
    procs = kw.pop("proc", [])
    specs = []
    for value in procs:
        name, sep, t = value.partition("=")
        if not sep or not name.strip() or not t.strip():
            raise ConfigError(f"--proc {value!r}: write NAME=TYPE, e.g. --proc acronyms=ner")
        specs.append({"name": name.strip(), "type": t.strip(), "options": inst.get(name.strip(), {})})
    if specs:
        kw["processors"] = specs
    return kw
