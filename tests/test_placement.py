"""GPU pinning without a GPU: a Ray cluster declaring 2 fake GPUs gives one actor per GPU, each seeing
its own CUDA_VISIBLE_DEVICES, and both still work (on CPU, since torch sees no CUDA device)."""

import pytest

from xlmflow import schemas
from xlmflow.ray_cluster.cluster import plan_layout
from xlmflow.ray_cluster.registry import make_settings
from xlmflow.tasks.shard import ShardWriter


@pytest.fixture
def ray_fake_gpus():
    import ray

    from xlmflow.ray_cluster.pool import shutdown_pools

    shutdown_pools()
    ray.shutdown()
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False)
    yield ray
    shutdown_pools()
    ray.shutdown()  # the next test that needs Ray starts a plain CPU one


@pytest.mark.slow
def test_one_actor_per_fake_gpu(ray_fake_gpus, tmp_path):
    import pyarrow as pa

    from xlmflow.ray_cluster.pool import get_pool

    layout = plan_layout(None)
    assert (layout.actors, layout.num_gpus, layout.num_cpus) == (2, 1.0, 1.0)
    settings = make_settings(inputs=["x"], out=str(tmp_path), tasks="lid", max_inflight_per_actor=1)
    pool = get_pool(settings)
    infos = pool.actor_infos
    assert sorted(i["cuda_visible_devices"] for i in infos) == ["0", "1"]
    assert all(i["device"] == "cpu" for i in infos)  # torch has no CUDA here: CPU fallback

    rows = [
        {
            "doc_id": f"d{i}",
            "text": t,
            "lang_hint": None,
            "n_chars": len(t),
            "source": "mem",
            "source_row": i,
            "meta": "{}",
        }
        for i, t in enumerate(["Alle Menschen sind frei und gleich an Würde und Rechten geboren."] * 8)
    ]
    writer = ShardWriter(0, schemas.STAGED_DOCS, 70, str(tmp_path / "stg"))  # as a content reducer does
    writer.add(pa.Table.from_pylist(rows, schema=schemas.STAGED_DOCS))
    shards = writer.close()
    done, failed = pool.run([s.to_dict() for s in shards], str(tmp_path / "stg"))
    assert not failed and len(done) == 8
    used = {s["actor"]["cuda_visible_devices"] for s in done.values()}
    assert used == {"0", "1"}, "both GPU actors should have taken shards"
    assert all(s["by_lang"] == {"deu_Latn": 1} for s in done.values())


def test_layout_refuses_more_actors_than_gpus(ray_fake_gpus):
    from xlmflow.errors import ConfigError

    with pytest.raises(ConfigError, match="GPUs"):
        plan_layout(3)
    assert plan_layout(None, gpu_fraction=0.5).actors == 4
