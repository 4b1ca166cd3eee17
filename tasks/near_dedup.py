"""Near-duplicate detection by MinHash + LSH, as pure functions for split tasks and band reducers.

Shape (the same as exact dedup's staged exchange; every step gives the same clusters whatever the split
size, the bucket count or how the input is chunked):
1. split task: `signatures` (K uint32 per document) -> `band_keys` (one uint64 per band; the band index is
   folded into the key, so keys of different bands never meet) -> rows (key, order) sent to the band
   bucket `bucket_of(key, B)`. `order` is the document's input-order key (an int64 that sorts like the
   input: files sorted, then row), so "first in input order" is "smallest order".
2. band reducer: `candidate_edges` over its rows: documents sharing a key are candidates; each is linked
   to the first of its key (a star keeps connectivity with one edge per document and key).
3. components: `UnionFind` over all edges (reducers may pre-merge theirs: `UnionFind.edges()` of a
   partial forest is a smaller edge list with the same components). The root of a component is its
   smallest order, i.e. the kept document; every other member is removed.
4. `near_duplicate_rows`: one row per removed document (doc, kept, cluster, Jaccard estimated from the
   two signatures).

Shingles: the text goes through the same normalisation as exact dedup (NFC, whitespace collapsed), then
word n-grams for space-separated scripts and character n-grams for scripts written without spaces
(`UNSEGMENTED`). The script comes from LID's label when there is one (`cmn_Hans`, `tha_Thai`, or a bare
ISO 15924 code), else from a count of the text's letters (`char_mode`). A text shorter than n units is one
shingle, so short identical texts still meet. Shingle hashing is our own, vectorised over a batch (a
polynomial hash mod 2^64 of each word, then of each n-gram of words or characters, mixed with splitmix64's
finaliser); the K permutations and minima are rensa's R-MinHash (pinned: its seeded permutations are part
of the signature). No Python `hash()`, no RNG stream: the same signature in every process.

Defaults (`MinHashParams`): 5-gram words, 5-gram characters, 112 permutations = 14 bands x 8 rows, the
peer tools' (datatrove) setting. Its S-curve P(candidate | J) = 1 - (1 - J^8)^14 crosses 0.5 at J ~ 0.72
(the threshold), is 0.92 at J = 0.8, 0.99 at 0.85, and 0.05 at J = 0.5, 0.009 at 0.4.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import pyarrow as pa

from xlmflow import schemas
from xlmflow.tasks.ingest import normalize

# ISO 15924 codes (as LID reports them) of scripts written without spaces between words.
UNSEGMENTED = frozenset(
    {"Hani", "Hans", "Hant", "Jpan", "Hira", "Kana", "Thai", "Laoo", "Khmr", "Mymr", "Tibt"}
)
# Code points of those scripts: Thai, Lao, Tibetan, Myanmar (+ext), Khmer (+symbols), kana, CJK ideographs.
_UNSEG_RANGES = [(0x0E00, 0x0EFF), (0x0F00, 0x0FFF), (0x1000, 0x109F), (0x1780, 0x17FF), (0x19E0, 0x19FF),
                 (0x3041, 0x30FF), (0x31F0, 0x31FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xA9E0, 0xA9FF),
                 (0xAA60, 0xAA7F), (0xF900, 0xFAFF), (0xFF66, 0xFF9F), (0x20000, 0x3134F)]  # fmt: skip
# Characters that are not letters of any script, for the share: ASCII non-letters, general punctuation,
# CJK symbols and punctuation, fullwidth ASCII punctuation and digits.
_NON_LETTER = [(0x00, 0x40), (0x5B, 0x60), (0x7B, 0xBF), (0x2000, 0x206F), (0x3000, 0x3040), (0xFF00, 0xFF20)]


@dataclass(frozen=True)
class MinHashParams:
    word_ngram: int = 5
    char_ngram: int = 5
    bands: int = 14
    rows: int = 8
    seed: int = 1

    @property
    def permutations(self) -> int:
        return self.bands * self.rows

    @property
    def threshold(self) -> float:
        """The Jaccard at which a pair becomes a candidate with probability about 1/2."""
        return (1 / self.bands) ** (1 / self.rows)

    def s_curve(self, j: float) -> float:
        """Probability that a pair of Jaccard j shares at least one band."""
        return 1 - (1 - j**self.rows) ** self.bands


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place on a uint64 array (wrapping arithmetic)."""
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


_P = 0x100000001B3  # FNV prime: odd, so invertible mod 2^64
_P_INV = pow(_P, -1, 1 << 64)
_pows: dict[int, np.ndarray] = {}


def _powers(base: int, n: int) -> np.ndarray:
    """base^0 .. base^(n-1) mod 2^64, cached and grown by doubling."""
    have = _pows.get(base)
    if have is None or len(have) < n:
        size = max(n, 2 * len(have) if have is not None else 4096)
        arr = np.full(size, base, dtype=np.uint64)
        arr[0] = 1
        have = _pows[base] = np.cumprod(arr, dtype=np.uint64)
    return have[:n]


def _range_hashes(units: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Polynomial hash of units[lo:hi] for every (lo, hi), mixed: sum units[k] * P^(k-lo), via a prefix
    sum and the inverse powers of P (mod 2^64), then the length folded in and the finaliser."""
    n = len(units)
    pre = np.zeros(n + 1, dtype=np.uint64)
    np.cumsum(units * _powers(_P, n), out=pre[1:])
    h = (pre[hi] - pre[lo]) * _powers(_P_INV, n + 1)[lo]
    h ^= (hi - lo).astype(np.uint64) << np.uint64(56)
    return _mix(h)


@cache
def _script_lut() -> np.ndarray:
    """Per code point: 1 a letter of an unsegmented script, 0 another letter, -1 not a letter."""
    lut = np.zeros(0x31350 + 1, dtype=np.int8)
    for lo, hi in _NON_LETTER:
        lut[lo : hi + 1] = -1
    for lo, hi in _UNSEG_RANGES:
        lut[lo : hi + 1] = 1
    lut[-1] = 0  # code points above the table: letters of other scripts
    return lut


def char_mode(texts: Sequence[str], langs: Sequence[str | None] | None = None) -> np.ndarray:
    """True where a text is shingled by characters: its LID script is unsegmented, or (no label) at least
    half of its letters are in unsegmented scripts."""
    out = np.zeros(len(texts), dtype=bool)
    todo = []
    for i in range(len(texts)):
        lang = langs[i] if langs is not None else None
        if lang:
            out[i] = lang.rsplit("_", 1)[-1] in UNSEGMENTED
        else:
            todo.append(i)
    if todo:
        lut = _script_lut()
        cut = [texts[i][:2000] for i in todo]  # the start of a text decides, as in LID
        cps = np.frombuffer("".join(cut).encode("utf-32-le"), dtype=np.uint32)
        cls = lut[np.minimum(cps, len(lut) - 1)]
        doc = np.repeat(np.arange(len(cut)), [len(t) for t in cut])
        unseg = np.bincount(doc, weights=cls == 1, minlength=len(cut))
        letters = np.bincount(doc, weights=cls >= 0, minlength=len(cut))
        out[todo] = (unseg > 0) & (2 * unseg >= letters)
    return out


def _ngram_ranges(
    starts: np.ndarray, counts: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lo, hi, owner) of every n-gram over units [start, start+count) of each document; a document with
    fewer than n units (but at least one) gives one range over all of them."""
    per = np.where(counts >= n, counts - n + 1, np.minimum(counts, 1))
    owner = np.repeat(np.arange(len(counts)), per)
    first = np.cumsum(per) - per
    lo = starts[owner] + (np.arange(len(owner)) - first[owner])
    hi = np.minimum(lo + n, (starts + counts)[owner])
    return lo, hi, owner


def shingle_hashes(
    texts: Sequence[str], chars: np.ndarray, params: MinHashParams
) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, owner): the uint64 shingle hashes of a batch of texts and the index of the text of each
    (a text's shingles are contiguous, in text order; repeats kept: a set's minimum ignores them)."""
    norm = [normalize(t) for t in texts]
    lens = np.fromiter((len(t) for t in norm), dtype=np.int64, count=len(norm))
    cps = np.frombuffer("\n".join(norm).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    starts = np.cumsum(lens + 1) - lens - 1
    # words: maximal runs without a space (normalize left single spaces; "\n" separates the texts)
    sep = np.concatenate(([True], (cps == 32) | (cps == 10), [True]))
    tok_lo = np.flatnonzero(~sep[1:-1] & sep[:-2])
    tok_hi = np.flatnonzero(~sep[1:-1] & sep[2:]) + 1
    tok_doc = np.searchsorted(starts, tok_lo, side="right") - 1
    tokens = _range_hashes(cps + np.uint64(1), tok_lo, tok_hi)
    n_tok = np.bincount(tok_doc, minlength=len(norm))
    parts = []
    for mask, units, first, count, n in (
        (~chars, tokens, np.cumsum(n_tok) - n_tok, n_tok, params.word_ngram),
        (chars, cps + np.uint64(1), starts, lens, params.char_ngram),
    ):
        idx = np.flatnonzero(mask)
        if len(idx):
            lo, hi, own = _ngram_ranges(first[idx], count[idx], n)
            parts.append((_range_hashes(units, lo, hi), idx[own]))
    if not parts:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    h = np.concatenate([p[0] for p in parts])
    owner = np.concatenate([p[1] for p in parts])
    order = np.argsort(owner, kind="stable")
    return h[order], owner[order]


def signatures(texts: Sequence[str], langs: Sequence[str | None] | None = None,
               params: MinHashParams = MinHashParams()) -> np.ndarray:  # fmt: skip
    """MinHash signatures (len(texts) x permutations, uint32) of a batch: our shingle hashes through
    rensa's full-set R-MinHash (Rust; about 2x our numpy multiply-add-shift, BENCHMARKS.md). A text without
    shingles (empty) gets all 0xFFFFFFFF and no band keys (`has_shingles`)."""
    # lazy: only near-dedup needs it
    from rensa import RMinHash

    h, owner = shingle_hashes(texts, char_mode(texts, langs), params)
    offsets = np.searchsorted(owner, np.arange(len(texts) + 1)).astype(np.uint64)
    rows = RMinHash.digest_matrix_from_flat_token_hashes(
        h, offsets, params.permutations, params.seed
    ).to_rows()
    return np.array(rows, dtype=np.uint32).reshape(len(texts), params.permutations)


def has_shingles(sigs: np.ndarray) -> np.ndarray:
    return (sigs != np.uint32(0xFFFFFFFF)).any(axis=1)


def band_keys(sigs: np.ndarray, params: MinHashParams = MinHashParams()) -> np.ndarray:
    """One uint64 key per document and band (len x bands): the band's rows hashed with its index."""
    d = sigs.reshape(len(sigs), params.bands, params.rows).astype(np.uint64)
    acc = np.zeros((len(sigs), params.bands), dtype=np.uint64)
    for r in range(params.rows):
        acc = acc * np.uint64(_P) + d[:, :, r]
    acc ^= np.arange(params.bands, dtype=np.uint64)[None, :] * np.uint64(0x9E3779B97F4A7C15)
    return _mix(acc)


def bucket_of(keys: np.ndarray, buckets: int) -> np.ndarray:
    """Band bucket of each key (keys are mixed: the low bits are as good as any)."""
    return (keys % np.uint64(buckets)).astype(np.int64)


def candidate_edges(keys: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """A band reducer's edges (E x 2 int64, unique, sorted): each document linked to the first (smallest
    order) of every key it shares. Rows of one key may come from any number of splits in any order."""
    keys, orders = np.asarray(keys, np.uint64).ravel(), np.asarray(orders, np.int64).ravel()
    if len(keys) < 2:
        return np.zeros((0, 2), np.int64)
    s = np.lexsort((orders, keys))
    k, o = keys[s], orders[s]
    first = np.concatenate(([True], k[1:] != k[:-1]))
    head = o[np.maximum.accumulate(np.where(first, np.arange(len(k)), 0))]
    e = np.stack([head, o], axis=1)[(~first) & (head != o)]
    return np.unique(e, axis=0) if len(e) else np.zeros((0, 2), np.int64)


class UnionFind:
    """Disjoint sets of int order keys; every root is the smallest member of its set, so the result is
    the same whatever the order the edges come in."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        p = self.parent
        root = x
        while (up := p.get(root, root)) != root:
            root = up
        while x != root:  # path compression
            p[x], x = root, p[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = (ra, rb) if ra < rb else (rb, ra)
            self.parent[hi] = lo
            self.parent.setdefault(lo, lo)

    def add_edges(self, edges: Iterable) -> UnionFind:
        for a, b in edges:
            self.union(int(a), int(b))
        return self

    def roots(self) -> dict[int, int]:
        """member -> root (= kept document) of every member that is not a root."""
        return {x: r for x in self.parent if (r := self.find(x)) != x}

    def edges(self) -> np.ndarray:
        """The forest as (root, member) edges: a reducer's partial result for the next merge."""
        r = self.roots()
        return np.array(sorted((v, k) for k, v in r.items()), dtype=np.int64).reshape(-1, 2)


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    return float(np.mean(sig_a == sig_b))


def exact_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard of two shingle-hash sets (unique sorted uint64 arrays)."""
    inter = len(np.intersect1d(a, b, assume_unique=True))
    union = len(a) + len(b) - inter
    return inter / union if union else 1.0


def shingle_sets(texts: Sequence[str], langs: Sequence[str | None] | None = None,
                 params: MinHashParams = MinHashParams()) -> list[np.ndarray]:  # fmt: skip
    """The unique sorted shingle hashes of each text, for exact verification and evaluation."""
    h, owner = shingle_hashes(texts, char_mode(texts, langs), params)
    bounds = np.searchsorted(owner, np.arange(len(texts) + 1))
    return [np.unique(h[bounds[i] : bounds[i + 1]]) for i in range(len(texts))]


def verify_edges(edges: np.ndarray, sets: dict[int, np.ndarray], threshold: float) -> np.ndarray:
    """The candidate edges whose two documents' exact shingle Jaccard is >= threshold. Costs one set
    intersection per edge plus moving each candidate's shingle set to the reducer that holds its edge."""
    keep = [exact_jaccard(sets[int(a)], sets[int(b)]) >= threshold for a, b in edges]
    return edges[np.array(keep, dtype=bool)] if len(edges) else edges


def near_duplicate_detail(kept_id: str, jaccard: float) -> str:
    """The detail of a `near_duplicate` reject: which document was kept, and how close the two are."""
    return f"near copy of {kept_id!r} (estimated Jaccard {jaccard:.2f})"


def near_duplicate_rows(roots: dict[int, int], ids: dict[int, str], sigs: dict[int, np.ndarray]) -> pa.Table:
    """The `near_duplicates` rows, one per removed document, in input order."""
    rows = sorted(roots.items())
    return pa.Table.from_pydict(
        {
            "doc_id": [ids[d] for d, _ in rows],
            "kept_id": [ids[k] for _, k in rows],
            "cluster_id": [k for _, k in rows],
            "estimated_jaccard": [estimated_jaccard(sigs[d], sigs[k]) for d, k in rows],
        },
        schema=schemas.NEAR_DUPLICATES,
    )


def find_near_duplicates(texts: Sequence[str], ids: Sequence[str], langs: Sequence[str | None] | None = None,
                         params: MinHashParams = MinHashParams(), chunks: int = 1, buckets: int = 1,
                         verify: float | None = None) -> pa.Table:  # fmt: skip
    """The whole stage in one process, through the same steps the split tasks and reducers run: the input
    cut into `chunks` (split tasks, orders = positions), band rows spread over `buckets` reducers, each
    reducer's forest merged. `verify`: keep only candidate edges of exact shingle Jaccard >= verify."""
    n = len(texts)
    cuts = np.linspace(0, n, chunks + 1).astype(int)
    sig_parts, rows_by_bucket = [], [[] for _ in range(buckets)]
    for c0, c1 in zip(cuts[:-1], cuts[1:], strict=True):  # split tasks
        part = list(texts[c0:c1])
        sig = signatures(part, None if langs is None else langs[c0:c1], params)
        sig_parts.append(sig)
        ok = np.flatnonzero(has_shingles(sig))
        keys = band_keys(sig[ok], params).ravel()
        orders = np.repeat(ok + c0, params.bands)
        bk = bucket_of(keys, buckets)
        for b in range(buckets):
            rows_by_bucket[b].append((keys[bk == b], orders[bk == b]))
    sigs = np.concatenate(sig_parts) if sig_parts else np.zeros((0, params.permutations), np.uint32)
    sets = None
    if verify is not None:
        sets = dict(enumerate(shingle_sets(texts, langs, params)))
    final = UnionFind()
    for rows in rows_by_bucket:  # band reducers
        keys = np.concatenate([r[0] for r in rows]) if rows else np.zeros(0, np.uint64)
        orders = np.concatenate([r[1] for r in rows]) if rows else np.zeros(0, np.int64)
        edges = candidate_edges(keys, orders)
        if sets is not None:
            edges = verify_edges(edges, sets, verify)
        final.add_edges(UnionFind().add_edges(edges).edges())
    roots = final.roots()
    return near_duplicate_rows(roots, dict(enumerate(ids)), {d: sigs[d] for d in {*roots, *roots.values()}})
