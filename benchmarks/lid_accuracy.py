"""Accuracy and speed of ray_cluster.langid on the UDHR paragraphs (80 languages).

    .venv/bin/python benchmarks/lid_accuracy.py [--corpus PATH] [--out benchmarks/lid_results.md]

A language is *claimed* when its accuracy is >= 97% (`und_*` answers count as wrong).
Throughput is measured after preload, over the whole corpus, best of --repeat runs.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CORPUS = os.path.join(HERE, "..", "..", "shared", "corpora", "parallel.jsonl")
CLAIM = 0.97


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default=DEFAULT_CORPUS)
    ap.add_argument("--out", default=None, help="write the markdown report here")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--group-margin", type=float, default=None, help="override langid.GROUP_MARGIN")
    args = ap.parse_args()

    from ray_cluster import langid
    from ray_cluster.langid import LanguageIdentifier

    if args.group_margin is not None:
        langid.GROUP_MARGIN = args.group_margin

    rows = [json.loads(line) for line in open(args.corpus, encoding="utf-8")]
    texts = [r["text"] for r in rows]
    t0 = time.perf_counter()
    lid = LanguageIdentifier(preload=True)
    preload_s = time.perf_counter() - t0
    runs = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        pred = lid.detect(texts)
        runs.append(time.perf_counter() - t0)
    best = min(runs)
    # lingua's own batch API vs a plain loop, same detector, same texts (only lingua's part of the work)
    det = lid._detector
    t0 = time.perf_counter()
    det.compute_language_confidence_values_in_parallel(texts)
    lingua_par = time.perf_counter() - t0
    t0 = time.perf_counter()
    for t in texts:
        det.compute_language_confidence_values(t)
    lingua_ser = time.perf_counter() - t0

    stats: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r, (lang, _score) in zip(rows, pred, strict=True):
        stats[r["lang"]][lang] += 1
    table = []
    for lang, c in stats.items():
        n = sum(c.values())
        acc = c[lang] / n
        und = sum(v for k, v in c.items() if k.startswith("und_"))
        errors = ", ".join(f"{k} {v}" for k, v in c.most_common() if k != lang)
        table.append((lang, n, acc, und, errors))
    claimed = [t for t in table if t[2] >= CLAIM]
    n_claimed = sum(t[1] for t in claimed)
    ok_claimed = sum(round(t[2] * t[1]) for t in claimed)
    overall = sum(round(t[2] * t[1]) for t in table) / len(rows)

    lines = [
        "## Language identification (`lid`) on the UDHR paragraphs",
        "",
        f"Command: `.venv/bin/python benchmarks/lid_accuracy.py --out benchmarks/lid_results.md` "
        f"({platform.python_version()}, {os.cpu_count()} CPU cores, shared machine).",
        "",
        f"- Paragraphs: {len(rows)}, languages: {len(table)}",
        f"- Overall accuracy: {overall:.1%} (`und_*` counts as wrong)",
        f"- Claimed languages (accuracy >= {CLAIM:.0%}): **{len(claimed)} of {len(table)}**, "
        f"accuracy on them {ok_claimed / n_claimed:.1%} ({ok_claimed}/{n_claimed})",
        f"- Not claimed: {', '.join(sorted(t[0] for t in table if t[2] < CLAIM))}",
        f"- Preload (building the detector, lingua models for Latn/Cyrl/Arab/Deva): {preload_s:.1f} s",
        f"- Throughput after preload: {len(rows) / best:.0f} paragraphs/s "
        f"(best of {len(runs)}: {', '.join(f'{x:.2f}' for x in runs)} s for {len(rows)} paragraphs)",
        f"- lingua alone on the same texts: `compute_language_confidence_values_in_parallel` "
        f"{len(rows) / lingua_par:.0f}/s, a loop of `compute_language_confidence_values` {len(rows) / lingua_ser:.0f}/s",
        f"- Rule parameters: MIN_CONF={langid.MIN_CONF}, SHORT_MIN_CONF={langid.SHORT_MIN_CONF} "
        f"(< {langid.SHORT_LETTERS} letters), GROUP_MARGIN={langid.GROUP_MARGIN}",
        "",
        "| lang | paragraphs | accuracy | und | wrong answers |",
        "|---|---:|---:|---:|---|",
    ]
    for lang, n, acc, und, errors in sorted(table, key=lambda t: (t[2], t[0])):
        lines.append(f"| {lang} | {n} | {acc:.1%}{' ✓' if acc >= CLAIM else ''} | {und} | {errors} |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(report)
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
