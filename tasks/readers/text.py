"""JSON lines and .txt: records from the decoded lines of a file (row numbers: see the package's doc)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import orjson

from xlmflow.tasks.readers.stream import BOM, PREVIEW, Bad, Lines, Long, Record, Source, to_newline, too_long


def jsonl(lines: Lines, src: Source) -> Iterator[Record]:
    n = 0
    for n, line in enumerate(lines, 1):  # noqa: B007 - n is used after the loop
        if type(line) is Long:
            more, ended = lines.skip(to_newline)
            head = line.head[:PREVIEW]
            if not ended and (bad := src.lost("this and any later lines")):
                yield n, bad, head
                return
            yield n, too_long("line", len(line.head) + more, lines.limit, ended), head
            continue
        if not line.endswith(b"\n") and (bad := src.lost("this and any later lines")):
            yield n, bad, line
            return
        body = line[3:] if line.startswith(BOM) else line
        body = body.rstrip(b"\r\n")
        if not body.strip():
            continue
        if _LONG_DIGITS.search(body):  # maybe an integer past 64 bits, which orjson turns into a float
            yield n, _slow_json(body), body
            continue
        try:
            yield n, orjson.loads(body), body
        except orjson.JSONDecodeError:
            yield n, _slow_json(body), body
    if bad := src.lost("any later lines"):  # the break fell exactly after a newline
        yield n + 1, bad, b""


# 19+ digits in a row: stdlib json parses such integers exactly (two ids past 2**64 would otherwise
# round to the same float); inside a string it costs only the slower parse
_LONG_DIGITS = re.compile(rb"\d{19}")


def _slow_json(body: bytes) -> object:
    """A line orjson refused or could misread (integers past 64 bits): say why it is bad (bad UTF-8 /
    bad JSON), or parse what stdlib json accepts (NaN, lone surrogates like "\\ud800", which the caller
    rejects as unencodable_text; big integers, exactly)."""
    try:
        s = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Bad("invalid_utf8", f"byte {exc.start} of the line is not UTF-8 ({exc.reason})")
    try:
        return json.loads(s)
    except (ValueError, RecursionError) as exc:
        return Bad("invalid_json", f"malformed JSON: {exc}")


def txt(src: Source, limit: int) -> Iterator[Record]:
    parts: list[bytes] = []
    size = 0
    for chunk in src:
        size += len(chunk)
        if size > limit:  # stop reading: the file is one document, and it is too long
            yield 0, too_long("file (one document)", size, limit, False), (parts or [chunk])[0][:PREVIEW]
            return
        parts.append(chunk)
    data = b"".join(parts)
    if bad := src.lost("the document"):
        yield 0, bad, data[:PREVIEW]
        return
    try:
        yield 0, {"text": data.decode("utf-8-sig")}, None
    except UnicodeDecodeError as exc:
        yield 0, Bad("invalid_utf8", f"byte {exc.start} of the file is not UTF-8 ({exc.reason})"), data
