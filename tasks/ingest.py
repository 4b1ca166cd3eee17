"""Ingest: expand the inputs, read every file, turn each row into a staged row or a reject.

Choices a user of the staged tables can rely on:
- Known fields: docs mode `text` (required), `id`, `lang` (-> `lang_hint`); pairs mode `src`, `mt`
  (required), `id`, `src_lang`, `mt_lang`. Every other field goes into `meta` as ONE JSON object string
  ("{}" when there is none), so files with different extra columns map onto one schema.
- `id` -> `doc_id`/`pair_id` as a string (non-strings as JSON: 7 -> "7"). A null or empty id counts as
  absent; the row then gets a content id "sha1:" + 16 hex of sha1(normalized text) (pairs: normalized
  src + "\\t" + normalized mt), so the same input gives the same ids on every run.
- normalized = NFC, whitespace runs -> one space, stripped. It is used for ids and dedup only; the staged
  text is the input text unchanged, and `n_chars` = len(text).
- Dedup is global over all inputs in sorted file order, first row wins: same normalized content ->
  `duplicate`; same id with other content -> `duplicate_id`. Every staged id is unique.
- Row numbers and formats: see tasks.readers. A file that cannot be parsed at all is one
  `unreadable_file` reject (source_row null) and counts as one input row; a file that breaks after
  some rows keeps them and adds one `truncated_input` reject. So input_rows == accepted + rejects.
- Hostile sizes stay bounded (settings.record_byte_limit, settings.max_file_bytes): a line/record over
  the byte limit is one row and one `too_long` reject, skipped unread. The part of a file past
  max_file_bytes is ONE `file_too_large` reject counting as one input row, as is a Parquet row group
  too large to read (`row_group_too_large`): the rows in them were never read, so never counted.
- An input the user named that matches nothing, or cannot be listed, is a FatalError.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import unicodedata
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from tasks.readers import SUPPORTED, Bad, format_of, read_records
from xlmflow import schemas
from xlmflow.errors import FatalError
from xlmflow.settings import RunSettings
from xlmflow.storage import fs_for, is_remote

log = logging.getLogger(__name__)

# I/O failures are not data problems: the run must stop rather than silently reject a whole file
_FATAL_IO = (FileNotFoundError, PermissionError, ConnectionError, TimeoutError)
_FORMAT_ERRORS = (ValueError, OSError, EOFError, csv.Error, zlib.error, pa.ArrowException)


@dataclass
class IngestResult:
    table: pa.Table  # schemas.STAGED_DOCS or schemas.STAGED_PAIRS
    rejects: list[dict]  # schemas.make_reject rows
    input_rows: int  # == table.num_rows + len(rejects)
    input_files: list[str]

    def counts(self) -> dict:
        by_reason = Counter(r["reason"] for r in self.rejects)
        return {
            "input_rows": self.input_rows,
            "accepted": self.table.num_rows,
            "rejects": len(self.rejects),
            "rejects_by_reason": dict(sorted(by_reason.items())),
        }


def normalize(text: str) -> str:
    """NFC + collapse whitespace + strip: the text that ids and dedup look at."""
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    return " ".join(text.split())  # str.split() splits on the same Unicode whitespace as re \s, faster


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
                for p in fs.find(top):  # hidden/underscore files (.crc, _SUCCESS) are not data
                    name = p.rsplit("/", 1)[-1]
                    (skipped if name.startswith((".", "_")) else files).append(p)
        except FatalError:
            raise
        except (OSError, ValueError) as exc:
            raise FatalError(
                f"cannot read input {inp!r}: {exc}; check the path and your access to it"
            ) from exc
        if files == [path] and format_of(path) is None:  # a file the user named explicitly
            raise FatalError(f"input {inp!r} is not a supported file type; supported: {SUPPORTED}")
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


def ingest(settings: RunSettings) -> IngestResult:
    """Read settings.inputs into one staged table (settings.mode) plus rejects; deterministic."""
    files = expand_inputs(settings.inputs)
    st = _Staging(settings.mode, settings.max_text_chars)
    for uri in files:
        _read_file(st, uri, settings.record_byte_limit, settings.max_file_bytes)
    table = pa.Table.from_pydict(st.cols, schema=st.schema)
    res = IngestResult(table, st.rejects, st.input_rows, files)
    if res.input_rows != table.num_rows + len(res.rejects):  # the accounting rule; a bug if it breaks
        raise RuntimeError(f"ingest lost rows: {res.counts()}")
    log.info("ingest: %s", res.counts())
    return res


def _read_file(st: _Staging, uri: str, max_record_bytes: int, max_file_bytes: int) -> None:
    before = st.input_rows
    it = read_records(uri, max_record_bytes=max_record_bytes, max_file_bytes=max_file_bytes)
    while True:
        try:
            rec = next(it)  # only the reader's own errors are caught, never those of st.feed
        except StopIteration:
            return
        except _FATAL_IO as exc:
            raise FatalError(
                f"cannot read {uri}: {exc}; check that it exists and that you have access"
            ) from exc
        except _FORMAT_ERRORS as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                # an errno means the storage failed (s3fs: EBUSY/EIO after its retries), not the
                # file's format: stop the run instead of committing the file's rows as rejects
                raise FatalError(f"cannot read {uri}: {exc}; the storage kept failing after retries") from exc
            got = st.input_rows - before
            msg = f"{type(exc).__name__}: {exc}"
            if got:
                st.feed(uri, None, Bad("truncated_input", f"file breaks after {got} rows: {msg}"), "")
            else:
                st.feed(uri, None, Bad("unreadable_file", f"cannot parse the file: {msg}"), "")
            return
        st.feed(uri, *rec)


def _as_str(v: object) -> str | None:
    """An optional id/lang field as a string; None or "" means absent."""
    if v is None or v == "":
        return None
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)


def _dumps(obj: object) -> str:
    import orjson

    try:
        return orjson.dumps(obj, default=str).decode()
    except TypeError:  # lone surrogates, huge ints: stdlib escapes them to plain ASCII
        return json.dumps(obj, default=str)


_TYPE_NAMES = {dict: "object", list: "array", bool: "boolean", int: "number", float: "number"}


def _string_field(value: dict, name: str) -> str | Bad:
    v = value.get(name)
    if v is None:
        why = f"field {name!r} is null" if name in value else f"no {name!r} field"
        return Bad(f"missing_{name}", why)
    if type(v) is not str:
        return Bad(f"non_string_{name}", f"field {name!r} is a {_TYPE_NAMES.get(type(v), type(v).__name__)}")
    if not v or v.isspace():
        return Bad(f"empty_{name}", f"field {name!r} is empty or whitespace only")
    return v


class _Staging:
    """Column lists of accepted rows, rejects, and the id/content maps for dedup."""

    def __init__(self, mode: str, max_chars: int) -> None:
        self.docs = mode == "docs"
        self.schema = schemas.STAGED_DOCS if self.docs else schemas.STAGED_PAIRS
        self.id_col = self.schema.names[0]
        self.known = {"text", "id", "lang"} if self.docs else {"src", "mt", "id", "src_lang", "mt_lang"}
        self.max_chars = max_chars
        self.cols: dict[str, list] = {n: [] for n in self.schema.names}
        self.rejects: list[dict] = []
        self.input_rows = 0
        self.by_digest: dict[bytes, int] = {}  # normalized content -> index of its accepted row
        self.by_id: dict[str, bytes] = {}  # accepted id -> its content digest

    def reject(self, source: str, row: int | None, reason: str, detail: str, raw: object) -> None:
        self.rejects.append(schemas.make_reject(source, row, reason, detail, raw))

    def feed(self, source: str, row: int | None, value: object, raw: bytes | str | None) -> None:
        self.input_rows += 1
        if type(value) is Bad:
            return self.reject(source, row, value.reason, value.detail, raw)
        if type(value) is not dict:
            t = _TYPE_NAMES.get(type(value), "null" if value is None else type(value).__name__)
            return self.reject(source, row, "not_object", f"a JSON {t} is not an object", raw)
        res = self._docs(value) if self.docs else self._pairs(value)
        if type(res) is Bad:
            return self.reject(source, row, res.reason, res.detail, _dumps(value) if raw is None else raw)
        rid, digest, payload = res
        rid = rid or "sha1:" + digest.hex()[:16]
        prev = self.by_id.get(rid)
        first = self.by_digest.get(digest if prev is None else prev)
        if first is not None:
            where = f"{self.cols['source'][first]} row {self.cols['source_row'][first]}"
            if prev is not None and prev != digest:
                reason, detail = "duplicate_id", f"id {rid!r} was already used by {where} with other content"
            else:
                reason, detail = "duplicate", f"same content as {where} ({self.cols[self.id_col][first]})"
            return self.reject(source, row, reason, detail, _dumps(value) if raw is None else raw)
        self.by_id[rid] = digest
        self.by_digest[digest] = len(self.cols["source"])
        extra = {k: v for k, v in value.items() if k not in self.known}
        cols = self.cols
        cols[self.id_col].append(rid)
        for name, v in payload:
            cols[name].append(v)
        cols["source"].append(source)
        cols["source_row"].append(row)
        cols["meta"].append(_dumps(extra) if extra else "{}")

    def _content(self, norm: str, value: dict, *fields: str) -> tuple[str | None, bytes, list] | Bad:
        """(id, digest, optional string fields), or unencodable_text for a lone surrogate in what we keep."""
        strs = [_as_str(value.get(f)) for f in ("id", *fields)]
        try:
            digest = hashlib.sha1(norm.encode("utf-8")).digest()
        except UnicodeEncodeError as exc:
            return Bad(
                "unencodable_text", f"text has a lone surrogate {exc.object[exc.start]!r}, not valid in UTF-8"
            )
        for name, s in zip(("id", *fields), strs, strict=True):
            if s is not None and not s.isascii():
                try:
                    s.encode("utf-8")
                except UnicodeEncodeError:
                    return Bad("unencodable_text", f"field {name!r} has a lone surrogate, not valid in UTF-8")
        return strs[0], digest, strs[1:]

    def _docs(self, value: dict) -> tuple | Bad:
        text = _string_field(value, "text")
        if type(text) is Bad:
            return text
        if len(text) > self.max_chars:
            return Bad("too_long", f"text has {len(text)} chars, over max_text_chars={self.max_chars}")
        res = self._content(normalize(text), value, "lang")
        if type(res) is Bad:
            return res
        rid, digest, (lang,) = res
        return rid, digest, (("text", text), ("lang_hint", lang), ("n_chars", len(text)))

    def _pairs(self, value: dict) -> tuple | Bad:
        src, mt = _string_field(value, "src"), _string_field(value, "mt")
        for v in (src, mt):
            if type(v) is Bad:
                return v
        if max(len(src), len(mt)) > self.max_chars:
            return Bad(
                "too_long", f"src/mt have {len(src)}/{len(mt)} chars, over max_text_chars={self.max_chars}"
            )
        res = self._content(normalize(src) + "\t" + normalize(mt), value, "src_lang", "mt_lang")
        if type(res) is Bad:
            return res
        rid, digest, (src_lang, mt_lang) = res
        return rid, digest, (("src", src), ("mt", mt), ("src_lang_hint", src_lang), ("mt_lang_hint", mt_lang))
