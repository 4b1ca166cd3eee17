"""make_pairs on the real UDHR parallel corpus, and its output read back by ingest in pairs mode."""

from __future__ import annotations

import json

import pytest

from tests.conftest import CORPUS
from tests.staged_ingest import ingest
from xlmflow.errors import ConfigError, FatalError
from xlmflow.ray_cluster.registry import make_settings
from xlmflow.tasks.pairs import make_pairs


@pytest.fixture(scope="module")
def corpus() -> dict[tuple[str, str], str]:
    with open(CORPUS, encoding="utf-8") as f:
        return {(r["id"], r["lang"]): r["text"] for r in map(json.loads, f)}


def test_english_to_a_few_targets(tmp_path, corpus):
    out = tmp_path / "pairs.jsonl"
    targets = ["deu_Latn", "jpn_Jpan", "amh_Ethi"]
    n = make_pairs(CORPUS, "eng_Latn", str(out), targets)
    pairs = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert n == len(pairs)
    assert n == sum(1 for uid, lang in corpus if lang in targets and (uid, "eng_Latn") in corpus)
    assert [p["mt_lang"] for p in pairs] == sorted((p["mt_lang"] for p in pairs), key=targets.index)
    for p in pairs:
        uid, src_lang, tgt = p["id"].split("|")
        assert (src_lang, p["src_lang"], p["mt_lang"]) == ("eng_Latn", "eng_Latn", tgt)
        assert p["src"] == corpus[(uid, "eng_Latn")] and p["mt"] == corpus[(uid, tgt)]
    assert len({p["id"] for p in pairs}) == n
    # amh has no preamble: no pair for it, rather than an empty mt
    assert "udhr:preamble|eng_Latn|amh_Ethi" not in {p["id"] for p in pairs}


def test_default_targets_are_all_other_languages_and_ingest_reads_them(tmp_path, corpus, ray_local):
    out = tmp_path / "all.jsonl"
    n = make_pairs(CORPUS, "eng_Latn", str(out))
    assert n == sum(1 for uid, lang in corpus if lang != "eng_Latn" and (uid, "eng_Latn") in corpus)
    res = ingest(make_settings(inputs=[str(out)], out=str(tmp_path / "o"), tasks="qe"))
    assert res.input_rows == n == res.table.num_rows + len(res.rejects)
    # ids are unique, so the only possible rejects are identical translations in two languages
    assert {r["reason"] for r in res.rejects} <= {"duplicate"}
    row = res.table.slice(0, 1).to_pylist()[0]
    assert row["src_lang_hint"] == "eng_Latn" and row["pair_id"].endswith("|eng_Latn|" + row["mt_lang_hint"])


def test_unknown_language_and_bad_rows_say_what_to_fix(tmp_path):
    with pytest.raises(ConfigError, match="xxx_Latn.*languages present"):
        make_pairs(CORPUS, "xxx_Latn", str(tmp_path / "p.jsonl"))
    with pytest.raises(ConfigError, match="zzz_Zzzz"):
        make_pairs(CORPUS, "eng_Latn", str(tmp_path / "p.jsonl"), ["deu_Latn", "zzz_Zzzz"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "lang": "eng_Latn", "text": "x"}\n{"id": "a", "lang"\n')
    with pytest.raises(FatalError, match="row 2"):
        make_pairs(str(bad), "eng_Latn", str(tmp_path / "p.jsonl"))
    assert not (tmp_path / "p.jsonl").exists()
