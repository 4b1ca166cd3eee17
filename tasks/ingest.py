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
- An input the user named that matches nothing, or cannot be listed, is a FatalError.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import logging
import os
import time
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa

from tasks.readers import SUPPORTED, Bad, format_of, read_piece, read_records
from xlmflow import schemas, storage
from xlmflow.errors import ConfigError, FatalError
from xlmflow.settings import RunSettings
from xlmflow.storage import fs_for, is_remote

log = logging.getLogger(__name__)

# I/O failures are not data problems: the run must stop rather than silently reject a whole file
_FATAL_IO = (FileNotFoundError, PermissionError, ConnectionError, TimeoutError)
_FORMAT_ERRORS = (ValueError, OSError, EOFError, csv.Error, zlib.error, pa.ArrowException)


@dataclass
class IngestResult:
    """The whole ingest of a partition in one process (`ingest`): for tests and small inputs."""

    table: pa.Table  # schemas.STAGED_DOCS or schemas.STAGED_PAIRS, in input order
    rejects: list[dict]  # schemas.make_reject rows, in input order
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
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return f"{exc.strerror or exc} (a broken or looping symlink?)"
    if stat.S_ISREG(mode):
        return None
    kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device or other"
    return f"{kind}, not a regular file"


def ingest(settings: RunSettings, staging: str | None = None) -> IngestResult:
    """The staged ingest (split tasks, then both dedup stages) run in this process, read back as one
    table in input order. Runs use the same steps as Ray tasks (ray_cluster.ingest_pipeline) and never
    read the staged data back; this is for tests and for looking at what a small input stages to."""
    import tempfile

    from tasks import dedup
    from tasks.splits import list_inputs, plan_splits

    listing = list_inputs(settings.inputs, settings.out)
    plan = plan_splits(listing, settings.split_bytes, settings.max_file_bytes, settings.dedup_buckets)
    payload = settings.model_dump_json()
    with tempfile.TemporaryDirectory(prefix="xlmflow-ingest-") as tmp:
        root = staging or tmp
        summaries = [read_split(s.to_dict(), plan.buckets, payload, root) for s in plan.splits]
        pieces = dedup.piece_table(plan, summaries)
        losers = [dedup.reduce_ids(b, summaries, pieces, plan.buckets, root) for b in range(plan.buckets)]
        parts = [
            dedup.reduce_content(c, summaries, losers, pieces, payload, root) for c in range(plan.buckets)
        ]
        tables = [storage.read_table_ipc(s["uri"]) for p in parts for s in p["shards"]]
        rejects = [r for s in summaries for r in read_split_rejects(s, pieces)]
        rejects += [r for p in parts for r in dedup.read_rejects(p)]
    schema = schemas.STAGED_DOCS if settings.mode == "docs" else schemas.STAGED_PAIRS
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    files = [e["path"] for e in listing]
    order = {u: i for i, u in enumerate(files)}
    if table.num_rows:
        keys = list(
            zip([order[s] for s in table["source"].to_pylist()], table["source_row"].to_pylist(), strict=True)
        )
        table = table.take(sorted(range(len(keys)), key=keys.__getitem__))
    rejects.sort(key=lambda r: (order[r["source"]], -1 if r["source_row"] is None else r["source_row"]))
    res = IngestResult(table, rejects, sum(s["input_rows"] for s in summaries), files)
    if res.input_rows != table.num_rows + len(res.rejects):  # the accounting rule; a bug if it breaks
        raise RuntimeError(f"ingest lost rows: {res.counts()}")
    return res


def split_dir(staging: str, split_id: str) -> str:
    return storage.join(staging, "ingest", "splits", split_id)


def read_split(split: dict, buckets: int, settings_json: str, staging: str) -> dict:
    """The ingest task of one split: read its pieces, validate, hash, and write its rows bucketed by
    content and by id, plus its rejects, to staging; returns a small summary. Idempotent: a split
    whose summary exists is not read again."""
    from ray_cluster import cluster

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


def read_split_rejects(summary: dict, pieces: list[dict]) -> Iterator[dict]:
    """A split's rejects, with source_row as the row in the whole file."""
    offsets = {int(k): pieces[int(k)]["offset"] for k in summary["spans"]}
    yield from staged_rejects(summary["uris"]["rejects"], summary["index_by_bucket"]["rejects"][0], offsets)


def staged_rejects(uri: str, index: list[int], offsets: dict[int, int]) -> Iterator[dict]:
    """Rejects a split task staged, with each piece's row offset added: rows in the whole file."""
    from tasks.staged import read_bucket

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
    import orjson

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
        from tasks.staged import BucketWriter

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
