"""Make QE input pairs from a parallel corpus whose rows share an `id` across languages.

Input rows are `{"id", "lang", "text"}` (any format tasks.readers reads, local or s3://), e.g.
shared/corpora/parallel.jsonl. Output is JSONL, one pair per line:
`{"id": "<id>|<src_lang>|<tgt>", "src", "mt", "src_lang", "mt_lang"}`, grouped by target language (in
the order given, else sorted) and, inside a target, in the corpus order of the ids. An id missing in
either language gives no pair; a repeated (id, lang) keeps its first text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from xlmflow.errors import ConfigError, FatalError
from xlmflow.storage import write_bytes
from xlmflow.tasks.readers import Bad, read_records


def make_pairs(
    parallel_path: str, src_lang: str, out_path: str, tgt_langs: Sequence[str] | None = None
) -> int:
    """Write src/mt pairs for every target language (all but src_lang by default); returns the count."""
    texts: dict[str, dict[str, str]] = {}  # id -> lang -> text, ids in corpus order
    try:
        for row, rec, _raw in read_records(parallel_path):
            if type(rec) is Bad or not isinstance(rec, dict):
                why = rec.detail if type(rec) is Bad else "not a JSON object"
                raise FatalError(f"{parallel_path} row {row}: {why}; fix or remove it")
            uid, lang, text = rec.get("id"), rec.get("lang"), rec.get("text")
            if not (isinstance(lang, str) and isinstance(text, str)) or uid is None:
                raise FatalError(f"{parallel_path} row {row}: needs 'id', 'lang' and 'text' (strings)")
            texts.setdefault(str(uid), {}).setdefault(lang, text)
    except (FileNotFoundError, ValueError) as exc:
        raise FatalError(f"cannot read parallel corpus {parallel_path}: {exc}") from exc

    present = sorted({lang for by_lang in texts.values() for lang in by_lang})
    targets = list(tgt_langs) if tgt_langs else [lang for lang in present if lang != src_lang]
    unknown = [lang for lang in [src_lang, *targets] if lang not in present]
    if unknown:
        raise ConfigError(
            f"language(s) {unknown} not in {parallel_path}; languages present: {', '.join(present)}"
        )

    lines = []
    for tgt in targets:
        for uid, by_lang in texts.items():
            if src_lang in by_lang and tgt in by_lang:
                pair = {"id": f"{uid}|{src_lang}|{tgt}", "src": by_lang[src_lang], "mt": by_lang[tgt],
                        "src_lang": src_lang, "mt_lang": tgt}  # fmt: skip
                lines.append(json.dumps(pair, ensure_ascii=False) + "\n")
    write_bytes(out_path, "".join(lines).encode("utf-8"))
    return len(lines)
