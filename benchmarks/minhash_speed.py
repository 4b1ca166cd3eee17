"""MinHash signatures per second on one core: tasks.near_dedup vs numpy, rensa and datasketch alone.

Every contender computes 112-permutation signatures of the same documents (UDHR paragraphs, all 80
languages, shingled as tasks.near_dedup does: 5-gram words, or 5-gram characters for unsegmented
scripts), rounds interleaved, median docs per CPU second reported (process CPU time, so other jobs on
a shared host do not count; pin to one core with taskset). Shingle building in Python is part of the cost of
those that need shingle strings (rensa, datasketch, datatrove-style), because a split task pays it.

    taskset -c 0 .venv/bin/python benchmarks/minhash_speed.py tests/data/parallel.jsonl --repeat 3 --rounds 3

rensa and datasketch are not project dependencies: `pip install rensa==0.5.0 datasketch==2.0.0` first.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from xlmflow.tasks import near_dedup as nd  # noqa: E402
from xlmflow.tasks.ingest import normalize  # noqa: E402

P = nd.MinHashParams()
K = P.permutations


def shingle_strings(texts: list[str], chars: np.ndarray) -> list[list[str]]:
    out = []
    for t, c in zip(texts, chars, strict=True):
        t = normalize(t)
        if c:
            n = P.char_ngram
            out.append([t[i : i + n] for i in range(max(1, len(t) - n + 1))])
        else:
            w, n = t.split(" "), P.word_ngram
            out.append([" ".join(w[i : i + n]) for i in range(max(1, len(w) - n + 1))])
    return out


def ours(texts: list[str]) -> np.ndarray:
    """What tasks.near_dedup ships: our vectorised shingle hashes, rensa's R-MinHash, as a numpy matrix."""
    return nd.signatures(texts, None, P)


_mask = (1 << 64) - 1
_vals, _x = [], 1
for _ in range(2 * K):  # splitmix64 from seed 1: fixed in every process
    _x = (_x + 0x9E3779B97F4A7C15) & _mask
    _z = ((_x ^ (_x >> 30)) * 0xBF58476D1CE4E5B9) & _mask
    _z = ((_z ^ (_z >> 27)) * 0x94D049BB133111EB) & _mask
    _vals.append(_z ^ (_z >> 31))
_MA = np.array([v | 1 for v in _vals[:K]], dtype=np.uint64)
_MB = np.array(_vals[K:], dtype=np.uint64)


def numpy_mas(texts: list[str], chunk: int = 8192) -> np.ndarray:
    """Our shingle hashes, then K multiply-add-shift hashes ((a*x+b) mod 2^64, high 32 bits) and the
    per-document minima in numpy, `chunk` shingles at a time."""
    h, owner = nd.shingle_hashes(texts, nd.char_mode(texts), P)
    sig = np.full((len(texts), K), (1 << 64) - 1, dtype=np.uint64)
    for s0 in range(0, len(h), chunk):
        own = owner[s0 : s0 + chunk]
        ph = h[s0 : s0 + chunk, None] * _MA[None, :] + _MB[None, :]
        starts = np.flatnonzero(np.concatenate(([True], own[1:] != own[:-1])))
        docs = own[starts]
        sig[docs] = np.minimum(sig[docs], np.minimum.reduceat(ph, starts, axis=0))
    return (sig >> np.uint64(32)).astype(np.uint32)


def shingle_hashing_only(texts: list[str]) -> object:
    return nd.shingle_hashes(texts, nd.char_mode(texts), P)


def rensa_strings(texts: list[str]) -> object:
    from rensa import RMinHash

    return RMinHash.digest_matrix_from_token_sets(shingle_strings(texts, nd.char_mode(texts)), K, 1)


def cminhash_strings(texts: list[str]) -> object:
    from rensa import CMinHash

    return CMinHash.digests_from_token_sets(shingle_strings(texts, nd.char_mode(texts)), K, 1)


def datasketch_bulk(texts: list[str]) -> object:
    from datasketch import MinHash

    sh = shingle_strings(texts, nd.char_mode(texts))
    return MinHash.bulk([[s.encode() for s in doc] for doc in sh], num_perm=K, seed=1)


_MERSENNE = np.uint64((1 << 61) - 1)
_rng = np.random.RandomState(1)
_A = _rng.randint(1, (1 << 61) - 1, K, dtype=np.uint64)
_B = _rng.randint(0, (1 << 61) - 1, K, dtype=np.uint64)


def datatrove_style(texts: list[str]) -> object:
    """datatrove's MinhashDedupSignature core: sha1 per shingle, then (a*x+b) mod (2^61-1) per doc."""
    out = []
    for doc in shingle_strings(texts, nd.char_mode(texts)):
        x = np.fromiter((struct.unpack("<I", hashlib.sha1(s.encode()).digest()[:4])[0] for s in set(doc)),
                        dtype=np.uint64)  # fmt: skip
        out.append(np.min(((x[:, None] * _A + _B) % _MERSENNE) & np.uint64(0xFFFFFFFF), axis=0))
    return out


CONTENDERS = {
    "xlmflow.tasks.near_dedup: our shingle hashes + rensa RMinHash": ours,
    "our shingle hashes + numpy multiply-add-shift": numpy_mas,
    "(our shingle hashing alone, no MinHash)": shingle_hashing_only,
    "rensa RMinHash, shingle strings": rensa_strings,
    "rensa CMinHash, shingle strings": cminhash_strings,
    "datasketch MinHash.bulk, shingle strings": datasketch_bulk,
    "datatrove-style sha1 + numpy per doc": datatrove_style,
}


def _cross_process_same(texts: list[str]) -> bool:
    code = (
        "import json,sys; sys.path.insert(0, '.'); from xlmflow.tasks import near_dedup as nd; "
        "t=json.load(sys.stdin); print(nd.signatures(t).tobytes().hex())"
    )
    res = subprocess.run([sys.executable, "-c", code], input=json.dumps(texts), capture_output=True, text=True,
                         check=True, cwd=os.path.join(os.path.dirname(__file__), ".."))  # fmt: skip
    return res.stdout.strip() == ours(texts).tobytes().hex()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("--repeat", type=int, default=3, help="corpus copies per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1000)
    args = ap.parse_args()
    texts = [json.loads(line)["text"] for line in open(args.corpus, encoding="utf-8")] * args.repeat
    batches = [texts[i : i + args.batch] for i in range(0, len(texts), args.batch)]
    print(f"{len(texts)} docs, {sum(map(len, texts)) / len(texts):.0f} chars/doc, python {platform.python_version()}, "
          f"numpy {np.__version__}, affinity {sorted(os.sched_getaffinity(0))}")  # fmt: skip
    rates: dict[str, list[float]] = {k: [] for k in CONTENDERS}
    for _ in range(args.rounds):
        for name, fn in CONTENDERS.items():
            t0 = time.process_time()  # CPU seconds of this process (all its threads): robust to a loaded host
            for b in batches:
                fn(b)
            rates[name].append(len(texts) / (time.process_time() - t0))
    base = statistics.median(rates[next(iter(CONTENDERS))])
    print("| implementation | docs/CPU-s (median) | rounds | vs ours |\n|---|---:|---|---:|")
    for name, r in rates.items():
        m = statistics.median(r)
        print(f"| {name} | {m:,.0f} | {', '.join(f'{x:,.0f}' for x in r)} | {m / base:.2f}x |")
    print("same signatures in a second process:", _cross_process_same(texts[:300]))


if __name__ == "__main__":
    main()
