"""Tokenization and aggregation in CPU worker processes give the rows of the in-process path."""

from __future__ import annotations

import json
import logging
import os

import pytest

from tests.conftest import CORPUS, staged_docs
from xlmflow.ray_cluster.registry import make_settings


@pytest.fixture(scope="module")
def texts():
    with open(CORPUS, encoding="utf-8") as f:
        recs = [json.loads(line) for line in f]
    some = [r["text"] for r in recs][:: max(1, len(recs) // 30)]
    return [*some, " ".join(some)[:5000], ""]


def _setup(tmp_path_factory, **kw):
    from xlmflow.ray_cluster.processors.base import build_processors

    cache = str(tmp_path_factory.getbasetemp() / "xlmflow-model-cache")
    s = make_settings(inputs=("in",), out="out", model_cache=cache, tasks="ner,embed,classify", **kw)
    procs = build_processors(s)
    for p in procs:
        p.setup("cpu")
        p.engine.prefetch_docs = 9  # several chunks per batch
        p.pipelined = True  # in-process, the same chunks as the workers get (the CUDA path's pipeline)
    return s, procs


def _outputs(procs, table):
    outs = {}
    for p in procs:
        res = p.process(table)
        table = res.table
        assert not res.rejects
        for name, parts in res.datasets.items():
            outs[name] = [row for t in parts for row in t.to_pylist()]
    return table.to_pylist(), outs


def test_workers_give_the_in_process_rows_and_survive_a_lost_worker(
    ray_local, tmp_path_factory, texts, caplog
):
    import ray

    from xlmflow.ray_cluster.phases import PhaseWorkers

    settings, procs = _setup(tmp_path_factory, ner_model="tiny", embed_model="tiny", classify_model="tiny")
    table = staged_docs(texts)
    ref = _outputs(procs, table)

    workers = PhaseWorkers(settings.model_dump_json(), 2)
    workers.wait_ready()
    for p in procs:
        p.phases = workers
    assert _outputs(procs, table) == ref
    stats = workers.stats()
    assert all(st["pid"] != os.getpid() and st["prepare"] >= 2 and st["finish"] >= 2 for st in stats)

    ray.kill(workers.workers[0])  # a worker process lost mid-run: the actor does the phases itself
    # earlier tests may have silenced logging (the CLI's in-process error path disables it after its
    # last line; Prefect's dictConfig disables existing loggers): watch this logger directly
    log = logging.getLogger("xlmflow.ray_cluster.processors.base")
    was_disabled, log.disabled = log.disabled, False
    level = logging.root.manager.disable
    logging.disable(logging.NOTSET)
    log.addHandler(caplog.handler)
    try:
        assert _outputs(procs, table) == ref
    finally:
        log.removeHandler(caplog.handler)
        log.disabled = was_disabled
        logging.disable(level)
    assert all(p.phases is None for p in procs)
    assert "CPU worker was lost" in caplog.text
    ray.kill(workers.workers[1])
