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
- Dedup is global over all inputs in sorted file order, in two stages (tasks.dedup): first the id
  stage over all rows (the first row with an id wins; a later row with that id is `duplicate_id` when
  its content differs, `duplicate` when it is the same), then the content stage over the rows left
  (the first row of each normalized content wins, the others are `duplicate`). Every staged id is
  unique. The work is split (tasks.splits): each split task reads its pieces, validates, normalizes,
  hashes and writes its rows to staging bucketed by content and by id, with its rejects; the dedup
  reducers decide and write the shards. None of the data passes through the driver.
- Row numbers and formats: see tasks.readers. A file that cannot be parsed at all is one
  `unreadable_file` reject (source_row null) and counts as one input row; a file that breaks after
  some rows keeps them and adds one `truncated_input` reject. So input_rows == accepted + rejects.
- Hostile sizes stay bounded (settings.record_byte_limit, settings.max_file_bytes): a line/record over
  the byte limit is one row and one `too_long` reject, skipped unread. The part of a file past
  max_file_bytes is ONE `file_too_large` reject counting as one input row, as is a Parquet row group
  too large to read (`row_group_too_large`): the rows in them were never read, so never counted.
- An input the user named that matches nothing, or cannot be listed, is a FatalError (tasks.inputs).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import logging
import time
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterator

import orjson
import pyarrow as pa

from xlmflow import schemas, storage
from xlmflow.errors import FatalError
from xlmflow.ray_cluster import cluster
from xlmflow.settings import RunSettings
from xlmflow.tasks.readers import Bad, read_piece, read_records
from xlmflow.tasks.staged import BucketWriter, read_bucket

log = logging.getLogger(__name__)

# I/O failures are not data problems: the run must stop rather than silently reject a whole file
_FATAL_IO = (FileNotFoundError, PermissionError, ConnectionError, TimeoutError)
_FORMAT_ERRORS = (ValueError, OSError, EOFError, csv.Error, zlib.error, pa.ArrowException)


def normalize(text: str) -> str:
    """NFC + collapse whitespace + strip: the text that ids and dedup look at."""
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    return " ".join(text.split())  # str.split() splits on the same Unicode whitespace as re \s, faster


def split_dir(staging: str, split_id: str) -> str:
    return storage.join(staging, "ingest", "splits", split_id)


def read_split(split: dict, buckets: int, settings_json: str, staging: str) -> dict:
    """The ingest task of one split: read its pieces, validate, hash, and write its rows bucketed by
    content and by id, plus its rejects, to staging; returns a small summary. Idempotent: a split
    whose summary exists is not read again."""
    settings = RunSettings.model_validate_json(settings_json)
    out = split_dir(staging, split["split_id"])
    done = storage.join(out, "_SUCCESS.json")
    if storage.exists(done):
        return storage.read_json(done)
    t0 = time.perf_counter()
    st = _SplitStaging(settings.mode, settings.max_text_chars, buckets, out)
    spans: dict[str, int] = {}
    try:
        with storage.naming_full_disk(out):
            for piece in split["pieces"]:
                spans[str(piece["index"])] = _read_piece(st, piece, settings)
            index = st.close()
    except BaseException:
        st.abort()
        raise
    summary = {
        "split_id": split["split_id"],
        "index": split["index"],
        "input_rows": st.input_rows,
        "accepted": st.accepted,
        "rejects": st.n_rejects,
        "rejects_by_reason": dict(sorted(st.by_reason.items())),
        "spans": spans,
        "uris": st.uris,
        "index_by_bucket": index,
        "node_id": cluster.node_id(),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if summary["input_rows"] != summary["accepted"] + summary["rejects"]:
        raise RuntimeError(f"split {split['split_id']} lost rows: {summary}")
    storage.write_json(done, summary)
    return summary


def staged_rejects(uri: str, index: list[int], offsets: dict[int, int]) -> Iterator[dict]:
    """Rejects a split task staged, with each piece's row offset added: rows in the whole file."""
    for batch in read_bucket(uri, index):
        for r in batch.to_pylist():
            p = r.pop("_piece")
            if r["source_row"] is not None:
                r["source_row"] += offsets[p]
            yield r


def _read_piece(st: _SplitStaging, piece: dict, settings: RunSettings) -> int:
    """Feed one piece's records; returns its span (the lines of a JSON lines range, else 0)."""
    uri, pi = piece["uri"], piece["index"]
    before = st.input_rows
    span = [0]
    limits = {"max_record_bytes": settings.record_byte_limit, "max_file_bytes": settings.max_file_bytes}
    if piece["start"] is None:
        it = read_records(uri, **limits)
    else:
        it = read_piece(uri, piece["start"], piece["end"], span=span, **limits)
    while True:
        try:
            rec = next(it)  # only the reader's own errors are caught, never those of st.feed
        except StopIteration:
            return span[0]
        except _FATAL_IO as exc:
            raise FatalError(
                f"cannot read {uri}: {exc}; check that it exists and that you have access"
            ) from exc
        except _FORMAT_ERRORS as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                # an errno means the storage failed (s3fs: EBUSY/EIO after its retries), not the
                # file's format: stop the run instead of committing the file's rows as rejects
                raise FatalError(f"cannot read {uri}: {exc}; the storage kept failing after retries") from exc
            if piece["start"] is not None:  # planned from its size: a format error means it changed
                raise FatalError(
                    f"cannot read {uri} from byte {piece['start']}: {exc}; did it change?"
                ) from exc
            got = st.input_rows - before
            msg = f"{type(exc).__name__}: {exc}"
            if got:
                st.feed(uri, pi, None, Bad("truncated_input", f"file breaks after {got} rows: {msg}"), "")
            else:
                st.feed(uri, pi, None, Bad("unreadable_file", f"cannot parse the file: {msg}"), "")
            return span[0]
        st.feed(uri, pi, *rec)


def _as_str(v: object) -> str | None:
    """An optional id/lang field as a string; None or "" means absent."""
    if v is None or v == "":
        return None
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)


def _dumps(obj: object) -> str:
    try:
        return orjson.dumps(obj, default=_json_value).decode()
    except TypeError:  # lone surrogates, huge ints: stdlib escapes them to plain ASCII
        return json.dumps(obj, default=_json_value)


def _json_value(v: object) -> object:
    """A value JSON has no type for: bytes (Parquet binary columns) as base64, the way JSON carries
    bytes elsewhere (BigQuery, protobuf's JSON mapping); anything else (decimals, durations) as its
    string."""
    if isinstance(v, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(v)).decode("ascii")
    return str(v)


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


class _SplitStaging:
    """Validates the rows of one split and writes them to staging, bucketed; no dedup here."""

    def __init__(self, mode: str, max_chars: int, buckets: int, out: str) -> None:
        self.docs = mode == "docs"
        self.known = {"text", "id", "lang"} if self.docs else {"src", "mt", "id", "src_lang", "mt_lang"}
        self.max_chars, self.buckets = max_chars, buckets
        self.uris = {k: storage.join(out, f"{k}.arrow") for k in ("rows", "keys", "rejects")}
        self.writers = {
            "rows": BucketWriter(self.uris["rows"], schemas.staged_rows_schema(mode), buckets),
            "keys": BucketWriter(self.uris["keys"], schemas.DEDUP_KEYS, buckets),
            "rejects": BucketWriter(self.uris["rejects"], schemas.STAGED_REJECTS, 1),
        }
        self.input_rows = self.accepted = self.n_rejects = 0
        self.by_reason: Counter[str] = Counter()

    def close(self) -> dict[str, list[list[int]]]:
        return {k: w.close() for k, w in self.writers.items()}

    def abort(self) -> None:
        for w in self.writers.values():
            w.abort()

    def reject(self, source: str, piece: int, row: int | None, reason: str, detail: str, raw: object) -> None:
        self.n_rejects += 1
        self.by_reason[reason] += 1
        r = schemas.make_reject(source, row, reason, detail, raw)
        self.writers["rejects"].add(0, (*r.values(), piece))

    def feed(self, source: str, piece: int, row: int | None, value: object, raw: bytes | str | None) -> None:
        self.input_rows += 1
        if type(value) is Bad:
            return self.reject(source, piece, row, value.reason, value.detail, raw)
        if type(value) is not dict:
            t = _TYPE_NAMES.get(type(value), "null" if value is None else type(value).__name__)
            return self.reject(source, piece, row, "not_object", f"a JSON {t} is not an object", raw)
        res = self._docs(value) if self.docs else self._pairs(value)
        if type(res) is Bad:
            return self.reject(
                source, piece, row, res.reason, res.detail, _dumps(value) if raw is None else raw
            )
        rid, digest, payload = res
        rid = rid or "sha1:" + digest.hex()[:16]
        extra = {k: v for k, v in value.items() if k not in self.known}
        excerpt = schemas.reject_raw(_dumps(value) if raw is None else raw)  # in case dedup rejects it
        cbucket = int.from_bytes(digest[:4], "big") % self.buckets
        self.writers["rows"].add(
            cbucket,
            (
                rid,
                *(v for _, v in payload),
                source,
                row,
                _dumps(extra) if extra else "{}",
                piece,
                digest,
                excerpt,
            ),
        )
        self.writers["keys"].add(zlib.crc32(rid.encode()) % self.buckets, (rid, digest, piece, row, cbucket))
        self.accepted += 1

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
