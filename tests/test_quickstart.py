"""The README's first command, as a user runs it: scripts/quickstart.sh on the bundled sample, offline.

Checks the output contract across datasets: every document has an embedding, entity spans index into
the document text, the smoke-test model is labelled as such, and the manifest reconciles the counts.
"""

import json
import os
import subprocess

import pytest

from tests.conftest import duck

ROOT = os.path.join(os.path.dirname(__file__), "..")
pytestmark = pytest.mark.slow


def test_quickstart_runs_lid_ner_embed_end_to_end(tmp_path):
    out = str(tmp_path / "out")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.pop("XLMFLOW_FAULTS", None)
    env["XLMFLOW_OUT"] = out
    env["XLMFLOW_MODEL_CACHE"] = str(tmp_path / "models")
    p = subprocess.run(
        ["bash", os.path.join(ROOT, "scripts", "quickstart.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        cwd=ROOT,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "deu_Latn" in p.stdout  # the DuckDB query at the end of the script printed languages
    # the actors were started with the run, beside Prefect's temporary API, and the flow used them
    assert "(started with the run, before the flow)" in p.stdout + p.stderr
    assert "View at" not in p.stdout + p.stderr  # no link to a UI the temporary API does not serve
    memos = list((tmp_path / "models" / "tokenizers").glob("*.pkl"))
    assert len(memos) == 1 and memos[0].stat().st_mode & 0o777 == 0o600  # one XLM-R tokenizer, private

    with open(os.path.join(out, "_manifests", "date=2026-11-01.json")) as f:
        m = json.load(f)
    c = m["counts"]
    assert c["input_rows"] == c["documents"] + c["rejects"] == 127 and c["documents"] > 100
    assert {"documents", "entities", "embeddings"} <= set(m["files"])
    assert {"ner", "embed", "lid"} <= set(m["models"])
    # the default on CPU, as it ran: packed forward, fp32 weights
    assert all(
        (m["models"][k]["forward"], m["models"][k]["precision"]) == ("packed", "fp32")
        for k in ("ner", "embed")
    )

    con = None
    for name in ("documents", "entities", "embeddings"):
        con = duck(out, name, "2026-11-01", con)

    def q(sql: str):
        return con.sql(sql).fetchall()

    docs, ents, embs = "documents", "entities", "embeddings"
    # one unit-norm embedding per document, nothing extra
    [(n_docs, n_emb, n_missing)] = q(
        f"select (select count(*) from {docs}), (select count(*) from {embs}), "
        f"(select count(*) from {docs} d anti join {embs} e using (doc_id))"
    )
    assert n_docs == n_emb == c["documents"] and n_missing == 0
    [(norm_lo, norm_hi, models)] = q(
        f"select min(sqrt(list_dot_product(embedding::float[], embedding::float[]))), "
        f"max(sqrt(list_dot_product(embedding::float[], embedding::float[]))), string_agg(distinct model) "
        f"from {embs}"
    )
    assert 0.999 < norm_lo <= norm_hi < 1.001
    assert "tiny" in models  # outputs say they come from a smoke-test model
    # entity spans index into the document text (the tiny model's labels are noise, its spans are real)
    bad = q(
        f"select count(*) from {ents} e join {docs} d using (doc_id) "
        f'where substring(d.text, e.start + 1, e."end" - e.start) <> e.text'
    )
    assert bad == [(0,)]
    [(n_ents,)] = q(f"select count(*) from {ents}")
    assert n_ents > 0 and n_ents == c["entities"]
