"""Near-dedup quality against brute-force ground truth, next to the S-curve the parameters predict.

Corpus: UDHR paragraphs of 24 languages (Latin, Cyrillic, Arabic, Devanagari, Greek, Hangul, and the
unsegmented Chinese, Japanese, Thai, Lao, Khmer, Myanmar). From each language, `--originals` paragraphs
(with at least 30 units: words, or characters for unsegmented scripts) get one near copy per edit rate k
(% of units substituted by units of other paragraphs of the same language, at random positions, fixed
seed); every other paragraph of those languages stays in as unrelated text. Originals come first in
input order, then the copies. The exact shingle Jaccard of every pair of documents (all of them: the
sample is the 24 languages) is computed by brute force (a sparse document x shingle product).

    .venv/bin/python benchmarks/near_dedup_quality.py tests/data/parallel.jsonl [--bands 14 --rows 8]

Reports: recall over pairs with J >= 0.8 (same cluster), false removals over pairs with J < 0.5 (same
cluster: over all such pairs, and over the planted ones), removed documents whose J to their kept
document is < 0.5, and per J bin the observed share of pairs sharing a band next to 1-(1-J^r)^b.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections import defaultdict

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from xlmflow.tasks import near_dedup as nd  # noqa: E402

LANGS = ["eng_Latn", "fra_Latn", "deu_Latn", "spa_Latn", "pol_Latn", "tur_Latn", "vie_Latn", "fin_Latn",
         "swh_Latn", "ind_Latn", "hun_Latn", "rus_Cyrl", "bul_Cyrl", "arb_Arab", "hin_Deva", "ell_Grek",
         "kor_Hang", "cmn_Hans", "jpn_Jpan", "tha_Thai", "lao_Laoo", "khm_Khmr", "mya_Mymr", "heb_Hebr"]  # fmt: skip
KS = [1, 2, 3, 4, 5, 8, 10, 15, 20, 30, 40, 50]


def units(text: str, chars: bool) -> list[str]:
    return list(text) if chars else text.split(" ")


def edit(text: str, chars: bool, k: int, pool: list[str], rng: random.Random) -> str:
    u = units(text, chars)
    n = max(1, round(len(u) * k / 100))
    for i in rng.sample(range(len(u)), n):
        u[i] = rng.choice(pool)
    return ("" if chars else " ").join(u)


def build(
    corpus: str, originals: int, seed: int, ks: list[int] = KS
) -> tuple[list[str], list[str], list[str], list[tuple]]:
    by_lang = defaultdict(list)
    for line in open(corpus, encoding="utf-8"):
        r = json.loads(line)
        if r["lang"] in LANGS:
            by_lang[r["lang"]].append(r)
    rng = random.Random(seed)
    texts, ids, langs, copies = [], [], [], []
    for lang in LANGS:
        rows = by_lang[lang]
        chars = lang.split("_")[1] in nd.UNSEGMENTED
        for r in rows:
            texts.append(r["text"])
            ids.append(f"{lang}/{r['id']}")
            langs.append(lang)
        long = [i for i, r in enumerate(rows) if len(units(r["text"], chars)) >= 30]
        for i in rng.sample(long, min(originals, len(long))):
            pool = [x for j, r in enumerate(rows) if j != i for x in units(r["text"], chars)]
            for k in ks:
                copies.append((lang, rows[i]["id"], k, edit(rows[i]["text"], chars, k, pool, rng)))
    orig_index = {i: n for n, i in enumerate(ids)}
    planted = []
    for lang, rid, k, text in copies:
        planted.append((orig_index[f"{lang}/{rid}"], len(texts), k, lang))
        texts.append(text)
        ids.append(f"{lang}/{rid}/copy-k{k}")
        langs.append(lang)
    return texts, ids, langs, planted


def all_pairs_jaccard(sets: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(i, j, J) of every pair i < j with a shared shingle, and the number of pairs in all."""
    vocab, inv = np.unique(np.concatenate(sets), return_inverse=True)
    rows = np.repeat(np.arange(len(sets)), [len(s) for s in sets])
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, inv)), shape=(len(sets), len(vocab)))
    inter = sp.triu(m @ m.T, k=1).tocoo()
    size = np.array([len(s) for s in sets], dtype=np.float64)
    j = inter.data / (size[inter.row] + size[inter.col] - inter.data)
    return inter.row, inter.col, j, len(sets) * (len(sets) - 1) // 2


# long: the benchmark's steps in the order they run, read in one place
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("--originals", type=int, default=10, help="paragraphs per language that get copies")
    ap.add_argument("--bands", type=int, default=nd.MinHashParams.bands)
    ap.add_argument("--rows", type=int, default=nd.MinHashParams.rows)
    ap.add_argument("--verify", type=float, default=None, help="exact-verify candidate edges at this J")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--words-everywhere", action="store_true",
                    help="dedup with word shingles in every script (ground truth keeps the script's own)")  # fmt: skip
    args = ap.parse_args()
    params = nd.MinHashParams(bands=args.bands, rows=args.rows)
    texts, ids, langs, planted = build(args.corpus, args.originals, args.seed)
    print(f"{len(texts)} docs ({len(planted)} planted copies), {len(LANGS)} languages; n={params.word_ngram} words / "
          f"{params.char_ngram} chars, {params.permutations} permutations = {params.bands} bands x {params.rows} "
          f"rows, threshold {params.threshold:.3f}, verify {args.verify}, words everywhere {args.words_everywhere}")  # fmt: skip
    t0 = time.process_time()
    dedup_langs = ["und_Latn"] * len(texts) if args.words_everywhere else langs
    table = nd.find_near_duplicates(texts, ids, dedup_langs, params, chunks=3, buckets=4, verify=args.verify)
    secs = time.process_time() - t0
    index = {d: n for n, d in enumerate(ids)}
    root = np.arange(len(texts))  # cluster_id = the kept document's input position
    for d, c in zip(table["doc_id"].to_pylist(), table["cluster_id"].to_pylist(), strict=True):
        root[index[d]] = c
    print(f"near-dedup: {secs:.2f} CPU s ({len(texts) / secs:,.0f} docs/CPU-s), removed {table.num_rows}")

    sets = nd.shingle_sets(texts, langs, params)
    i, j, jac, n_pairs = all_pairs_jaccard(sets)
    keys = nd.band_keys(nd.signatures(texts, dedup_langs, params), params)
    same = root[i] == root[j]
    direct = (keys[i] == keys[j]).any(axis=1)
    hi = jac >= 0.8
    lo_all = n_pairs - int(hi.sum()) - int(((jac >= 0.5) & ~hi).sum())
    lo = jac < 0.5
    planted_set = {(a, b) for a, b, _, _ in planted}
    is_planted = np.array([(a, b) in planted_set for a, b in zip(i.tolist(), j.tolist(), strict=True)])
    print(f"pairs: {n_pairs:,} in all, {len(jac):,} sharing a shingle, {int(hi.sum())} with J >= 0.8, "
          f"{int(((jac >= 0.5) & ~hi).sum())} in [0.5, 0.8), {lo_all:,} with J < 0.5")  # fmt: skip
    print(f"recall, J >= 0.8: {same[hi].mean():.4f} ({int(same[hi].sum())}/{int(hi.sum())}; direct band share "
          f"{direct[hi].mean():.4f}, S-curve mean {np.mean([params.s_curve(x) for x in jac[hi]]):.4f})")  # fmt: skip
    fr = int(same[lo].sum())
    pl = lo & is_planted
    print(f"false removals, J < 0.5: {fr}/{lo_all:,} pairs = {fr / lo_all:.6%}; planted pairs with J < 0.5: "
          f"{int(same[pl].sum())}/{int(pl.sum())} = {same[pl].mean():.2%} (S-curve mean "
          f"{np.mean([params.s_curve(x) for x in jac[pl]]):.2%})")  # fmt: skip
    pos = {(a, b): x for a, b, x in zip(i.tolist(), j.tolist(), jac.tolist(), strict=True)}
    rem = [(int(k), d) for d, k in zip(range(len(texts)), root.tolist(), strict=True) if k != d]
    bad = sum(pos.get((k, d), 0.0) < 0.5 for k, d in rem)
    print(
        f"removed documents whose exact J to the kept one is < 0.5: {bad}/{len(rem)} = {bad / max(1, len(rem)):.2%}"
    )
    print(
        "\n| J bin | pairs | same band (observed) | S-curve 1-(1-J^r)^b | same cluster |\n|---|---:|---:|---:|---:|"
    )
    for b0 in np.arange(0.0, 1.0, 0.1):
        m = (jac >= b0) & (jac < b0 + 0.1 + (1e-9 if b0 >= 0.9 else 0))
        if m.sum():
            pred = np.mean([params.s_curve(x) for x in jac[m]])
            print(
                f"| [{b0:.1f}, {b0 + 0.1:.1f}) | {int(m.sum()):,} | {direct[m].mean():.4f} | {pred:.4f} | {same[m].mean():.4f} |"
            )
    print(
        "\n| k % edited | planted pairs | mean exact J | found (same cluster) | Latin | unsegmented |\n|---:|---:|---:|---:|---:|---:|"
    )
    for k in KS:
        ps = [(a, b, lang) for a, b, kk, lang in planted if kk == k]
        f = [root[a] == root[b] for a, b, _ in ps]
        lat = [x for x, (_, _, lang) in zip(f, ps, strict=True) if lang.endswith("Latn")]
        uns = [x for x, (_, _, lang) in zip(f, ps, strict=True) if lang.split("_")[1] in nd.UNSEGMENTED]
        mj = np.mean([pos.get((a, b), 0.0) for a, b, _ in ps])
        print(f"| {k} | {len(ps)} | {mj:.3f} | {np.mean(f):.2%} | {np.mean(lat):.2%} | {np.mean(uns):.2%} |")


if __name__ == "__main__":
    main()
