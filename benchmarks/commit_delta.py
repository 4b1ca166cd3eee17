"""Commit time of one 100k-document partition: Delta table commits vs the plain manifest commit.

Both sides commit the same already written Parquet files (documents + rejects, as `collect` writes
them), so data writing is out of the figure; it is timed once and reported for scale.

- manifest (the reference, the layout before Delta tables): write `_manifests/date=D.json` (the commit
  point), then list the partition's directories and delete the files it does not list;
- delta (xlmflow today): per table `ensure_table` + one add/remove commit against the run's snapshot,
  then the run's archived manifest and the current manifest, then the debris check (table history).

Each side runs a first commit (tables created) and a replacing commit (`--force`: remove + add), in
alternating order, on a local directory and on a moto S3 server started as a separate process.

    .venv/bin/python benchmarks/commit_delta.py --docs 100000 --reps 3

Results: benchmarks/commit_results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DATE = "2026-11-01"


def _docs(n: int):  # noqa: ANN202
    import pyarrow as pa

    from xlmflow.ray_cluster.registry import main_schema, make_settings

    texts = [json.loads(line)["text"] for line in open(os.path.join(ROOT, "tests", "data", "parallel.jsonl"))]
    rows = [texts[i % len(texts)] for i in range(n)]
    return pa.table(
        {
            "doc_id": [f"doc-{i:07d}" for i in range(n)],
            "text": rows,
            "lang": ["eng_Latn"] * n,
            "lang_score": pa.array([0.99] * n, pa.float32()),
            "n_chars": pa.array([len(t) for t in rows], pa.int32()),
            "source": ["bench.jsonl"] * n,
            "source_row": list(range(n)),
            "lang_hint": [None] * n,
            "meta": ["{}"] * n,
        },
        schema=main_schema(make_settings(inputs=("bench.jsonl",), out="out")),  # a lid run's documents
    )


def _write(out: str, docs, n_rejects: int) -> tuple[dict, dict, float]:  # noqa: ANN001
    from tests.tables import write_table
    from xlmflow import manifest as mf
    from xlmflow import schemas

    run = uuid.uuid4().hex
    rej = schemas.rejects_table(
        [schemas.make_reject("bench.jsonl", i, "empty_text", "") for i in range(n_rejects)]
    )
    t = time.perf_counter()
    parts = {n: write_table(out, n, DATE, run, t) for n, t in (("documents", docs), ("rejects", rej))}
    secs = time.perf_counter() - t
    manifest = {
        "manifest_version": mf.MANIFEST_VERSION,
        "date": DATE,
        "run_id": run,
        "files": {n: [f] for n, (f, _) in parts.items()},
        "counts": {"input_rows": docs.num_rows + n_rejects, "documents": docs.num_rows, "rejects": n_rejects},
    }
    return manifest, {n: s for n, (_, s) in parts.items()}, secs


def commit_manifest(out: str, manifest: dict, _schemas: dict) -> None:
    """The reference: the plain layout's commit (manifest written last, then unlisted files deleted)."""
    from xlmflow import manifest as mf
    from xlmflow import part_files, storage

    storage.write_json(mf.manifest_uri(out, DATE), manifest)
    listed = {storage.join(out, f["path"]) for fs in manifest["files"].values() for f in fs}
    stale = []
    for n in manifest["files"]:
        stale += [u for u in storage.list_files(part_files.partition_dir(out, n, DATE)) if u not in listed]
    storage.remove(stale)


def commit_delta(out: str, manifest: dict, schemas_: dict) -> None:
    from xlmflow import delta, partition

    base = delta.snapshot(out, list(manifest["files"]))
    partition.commit_tables(out, DATE, manifest["files"], schemas_, base, manifest)
    partition.cleanup_partition(out, DATE, manifest)


def _moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=2).close()
            break
        except OSError:
            time.sleep(0.1)
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    return proc, endpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--rejects", type=int, default=1_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--where", default="local,s3")
    a = ap.parse_args()
    docs = _docs(a.docs)
    sides = {"manifest": commit_manifest, "delta": commit_delta}
    results: dict = {}
    proc = None
    try:
        for where in a.where.split(","):
            if where == "s3":
                import boto3

                proc, endpoint = _moto()
            for rep in range(a.reps):
                order = list(sides) if rep % 2 == 0 else list(sides)[::-1]
                for side in order:
                    if where == "s3":
                        bucket = f"bench-{uuid.uuid4().hex[:10]}"
                        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
                        out = f"s3://{bucket}/out"
                    else:
                        out = os.path.join(tempfile.mkdtemp(prefix="commit-bench-"), "out")
                    for step in ("first", "replace"):
                        manifest, schemas_, write_s = _write(out, docs, a.rejects)
                        t = time.perf_counter()
                        sides[side](out, manifest, schemas_)
                        secs = time.perf_counter() - t
                        results.setdefault((where, step, side), []).append(secs)
                        results.setdefault((where, "write files", "both"), []).append(write_s)
                        print(
                            f"{where} rep {rep} {side:8} {step:7}: commit {secs:.3f}s (files written in {write_s:.2f}s)"
                        )
    finally:
        if proc:
            proc.terminate()
    print(f"\n{a.docs} documents + {a.rejects} rejects; median of {a.reps} reps, seconds")
    print("| where | commit | manifest | delta | delta / manifest |\n|---|---|---|---|---|")
    for where in a.where.split(","):
        for step in ("first", "replace"):
            m = statistics.median(results[(where, step, "manifest")])
            d = statistics.median(results[(where, step, "delta")])
            print(f"| {where} | {step} | {m:.3f} | {d:.3f} | {d / m:.1f}× |")
        w = statistics.median(results[(where, "write files", "both")])
        print(f"| {where} | (writing the data files, both sides) | {w:.2f} | | |")


if __name__ == "__main__":
    main()
