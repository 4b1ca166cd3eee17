"""Near-dedup building blocks (tasks.near_dedup): shingles per script, signatures, LSH clusters."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import unicodedata
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from xlmflow import schemas
from xlmflow.tasks import near_dedup as nd
from xlmflow.tasks.ingest import normalize

DATA = Path(__file__).parent / "data" / "parallel.jsonl"
ROOT = Path(__file__).parent.parent
P = nd.MinHashParams()


@pytest.fixture(scope="module")
def udhr() -> dict[str, list[str]]:
    by_lang = defaultdict(list)
    for line in DATA.open(encoding="utf-8"):
        r = json.loads(line)
        by_lang[r["lang"]].append(r["text"])
    return by_lang


def _units(text: str, chars: bool) -> list[str]:
    return list(text) if chars else text.split(" ")


def _ref_shingles(text: str, chars: bool) -> set[str]:
    """The shingles as strings, written the plain way."""
    t = normalize(text)
    u, n = (list(t), P.char_ngram) if chars else (t.split(" "), P.word_ngram)
    sep = "" if chars else " "
    return {sep.join(u[i : i + n]) for i in range(max(1, len(u) - n + 1))}


def _edit(text: str, chars: bool, share: float, rng: random.Random) -> str:
    u = _units(text, chars)
    for i in rng.sample(range(len(u)), max(1, round(len(u) * share))):
        u[i] = "ZZ" if not chars else "〇"
    return ("" if chars else " ").join(u)


def test_shingles_follow_the_script(udhr: dict[str, list[str]]) -> None:
    # from LID's label (a language_script code or a bare script), whatever the letters say
    labels = ["eng_Latn", "cmn_Hans", "jpn_Jpan", "tha_Thai", "und_Khmr", "kor_Hang", "Thai", "rus_Cyrl"]
    want = [False, True, True, True, True, False, True, False]
    assert nd.char_mode(["x"] * len(labels), labels).tolist() == want
    # without LID: a count of the letters' scripts, on every paragraph of each language
    for lang, want in [("eng_Latn", False), ("rus_Cyrl", False), ("kor_Hang", False), ("arb_Arab", False),
                       ("cmn_Hans", True), ("cmn_Hant", True), ("jpn_Jpan", True), ("tha_Thai", True),
                       ("lao_Laoo", True), ("khm_Khmr", True), ("mya_Mymr", True), ("bod_Tibt", True)]:  # fmt: skip
        assert nd.char_mode(udhr[lang]).tolist() == [want] * len(udhr[lang]), lang
    # the hashed shingles are exactly the word / character 5-grams: same counts, same Jaccard
    texts, chars = [], []
    langs = [
        ("eng_Latn", False),
        ("deu_Latn", False),
        ("cmn_Hans", True),
        ("jpn_Jpan", True),
        ("tha_Thai", True),
    ]
    for lang, ch in langs:
        rng = random.Random(lang)
        for t in udhr[lang][10:14]:
            texts += [t, _edit(t, ch, 0.1, rng)]
            chars += [ch, ch]
    sets = nd.shingle_sets(texts)
    for i in range(0, len(texts), 2):
        a, b = _ref_shingles(texts[i], chars[i]), _ref_shingles(texts[i + 1], chars[i])
        assert (len(sets[i]), len(sets[i + 1])) == (len(a), len(b))
        assert nd.exact_jaccard(sets[i], sets[i + 1]) == pytest.approx(len(a & b) / len(a | b))
    # the same normalisation as exact dedup (NFC, whitespace), and a text shorter than n is one shingle
    nfd = unicodedata.normalize("NFD", "Café  au\u00a0lait ist gut, sagt er")
    s = nd.shingle_sets(["Café au lait ist gut, sagt er", nfd, "zwei Wörter", "短文"])
    assert np.array_equal(s[0], s[1]) and len(s[0]) == 3 and len(s[2]) == len(s[3]) == 1


def test_signatures_are_the_same_in_another_process(udhr: dict[str, list[str]]) -> None:
    texts = [t for lang in ("eng_Latn", "cmn_Hans", "tha_Thai", "rus_Cyrl") for t in udhr[lang][:20]]
    sig = nd.signatures(texts)
    code = "import json,sys; from xlmflow.tasks import near_dedup as nd; print(nd.signatures(json.load(sys.stdin)).tobytes().hex())"
    # another hash seed for str, and rensa's thread pool at one thread (this process: one per core)
    env = {**os.environ, "PYTHONHASHSEED": "12345", "RAYON_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(texts), capture_output=True, text=True,
                         check=True, cwd=ROOT, env=env).stdout.strip()  # fmt: skip
    assert out == sig.tobytes().hex()
    # a text's signature does not depend on the batch it is in
    assert np.array_equal(nd.signatures(texts[::-1])[::-1], sig)
    assert np.array_equal(nd.signatures(texts[5:6])[0], sig[5])


@pytest.fixture(scope="module")
def planted(udhr: dict[str, list[str]]) -> tuple[list[str], list[str], list[tuple[int, int, float]]]:
    """Documents of 4 consecutive paragraphs in 6 languages, and for each one copy with 2% of its units
    (words; characters for Chinese, Japanese, Thai) replaced (5-gram J about 0.8 or more) and one with
    20% replaced (J about 0.2). Returns texts, ids, and (original, copy, share) per planted copy."""
    docs = []
    for lang in ("eng_Latn", "fra_Latn", "deu_Latn", "cmn_Hans", "jpn_Jpan", "tha_Thai"):
        paras = udhr[lang]
        docs += [(f"{lang}/{i}", lang, " ".join(paras[i : i + 4])) for i in range(0, len(paras) - 3, 4)]
    texts, ids = [d[2] for d in docs], [d[0] for d in docs]
    rng, copies = random.Random(7), []
    for n, (did, lang, text) in enumerate(docs):
        for share in (0.02, 0.2):
            copies.append((n, len(texts), share))
            texts.append(_edit(text, lang.endswith(("Hans", "Jpan", "Thai")), share, rng))
            ids.append(f"{did}/copy{share}")
    return texts, ids, copies


def _roots(table) -> dict[str, str]:  # noqa: ANN001
    return dict(zip(table["doc_id"].to_pylist(), table["kept_id"].to_pylist(), strict=True))


def test_planted_near_copies_found_unrelated_kept(planted) -> None:  # noqa: ANN001
    texts, ids, copies = planted
    table = nd.find_near_duplicates(texts, ids)
    assert table.schema == schemas.NEAR_DUPLICATES
    removed = _roots(table)
    near = [(o, c) for o, c, share in copies if share == 0.02]
    far = [(o, c) for o, c, share in copies if share == 0.2]
    sets = nd.shingle_sets(texts)
    # the 2% copies are found (each with its own original kept), nothing else is removed
    assert removed.items() <= {ids[c]: ids[o] for o, c in near}.items()
    assert len(removed) >= 0.95 * len(near)
    assert all(ids[c] in removed for o, c in near if nd.exact_jaccard(sets[o], sets[c]) >= 0.85)
    assert not {ids[c] for _, c in far} & removed.keys()
    for row in table.to_pylist():
        c = ids.index(row["doc_id"])
        exact = nd.exact_jaccard(sets[c], sets[ids.index(row["kept_id"])])
        assert exact >= 0.75 and abs(row["estimated_jaccard"] - exact) < 0.15
        assert row["cluster_id"] == ids.index(row["kept_id"])
    assert nd.near_duplicate_detail("eng/1", 0.8734) == "near copy of 'eng/1' (estimated Jaccard 0.87)"
    assert schemas.NEAR_DUPLICATE == "near_duplicate"
    # exact verification drops candidates under its bar: at 0.99 none of the 2% copies stays
    assert nd.find_near_duplicates(texts, ids, verify=0.99).num_rows == 0
    assert nd.find_near_duplicates(texts, ids, verify=0.5).equals(table)


def test_clusters_do_not_depend_on_chunks_or_buckets(planted) -> None:  # noqa: ANN001
    texts, ids, _ = planted
    base = nd.find_near_duplicates(texts, ids)
    assert base.num_rows > 50
    for chunks, buckets in [(3, 3), (7, 7), (7, 1), (1, 7), (3, 5)]:
        again = nd.find_near_duplicates(texts, ids, chunks=chunks, buckets=buckets)
        assert again.equals(base), (chunks, buckets)


def test_kept_is_first_in_input_order(planted) -> None:  # noqa: ANN001
    texts, ids, copies = planted
    o, c, _ = copies[0]
    # the copy comes first, then the original, then a second copy of the copy
    table = nd.find_near_duplicates([texts[c], texts[o], texts[c]], ["copy", "orig", "copy2"])
    assert _roots(table) == {"orig": "copy", "copy2": "copy"}
    assert table["estimated_jaccard"].to_pylist()[1] == 1.0


def test_clusters_are_transitive() -> None:
    # A~B share one band key, B~C another, A and C none: one cluster, kept A; split over reducers
    keys = np.array([11, 11, 22, 22], dtype=np.uint64)
    orders = np.array([5, 9, 9, 14], dtype=np.int64)
    e1, e2 = nd.candidate_edges(keys[:2], orders[:2]), nd.candidate_edges(keys[2:], orders[2:])
    assert e1.tolist() == [[5, 9]] and e2.tolist() == [[9, 14]]
    for edges in ([e1, e2], [e2, e1]):
        uf = nd.UnionFind()
        for e in edges:
            uf.add_edges(nd.UnionFind().add_edges(e).edges())
        assert uf.roots() == {9: 5, 14: 5}
    # a key's rows may come in any order from any number of splits; the star centres on the first
    star = nd.candidate_edges(np.array([3, 3, 3], np.uint64), np.array([8, 2, 5]))
    assert star.tolist() == [[2, 5], [2, 8]]
    # end to end: a chain of copies, each edited at another place (J: a~b 0.86, b~c 0.85, a~c 0.73),
    # whose ends share no band
    a = [f"w{i}" for i in range(300)]
    b = a[:40] + ["x"] * 30 + a[70:]
    c = b[:200] + ["y"] * 30 + b[230:]
    texts = [" ".join(t) for t in (a, b, c)]
    k = nd.band_keys(nd.signatures(texts))
    assert (k[0] == k[1]).any() and (k[1] == k[2]).any() and not (k[0] == k[2]).any()
    assert _roots(nd.find_near_duplicates(texts, ["a", "b", "c"], buckets=3)) == {"b": "a", "c": "a"}
