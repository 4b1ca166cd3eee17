"""A pool of long-lived ShardWorker actors with bounded shards in flight and bounded retries.

Ray's actor defaults are at-most-once (max_restarts=0, max_task_retries=0). We let a dead actor restart
(reloading its models) and re-submit its shards ourselves, so a shard is retried on whichever actor is
free, a bounded number of times. Results are written under deterministic names by the actor and a
shard counts as done only via its marker, so a retry can never duplicate output.
"""

from __future__ import annotations

import collections
import hashlib
import logging
from collections.abc import Callable

from ray_cluster.cluster import Layout, connect, plan_layout
from xlmflow.errors import FatalError
from xlmflow.settings import RunSettings

log = logging.getLogger(__name__)

ACTOR_MAX_RESTARTS = 3  # a restarted actor reloads its models; past this the actor is dropped
STARTUP_TIMEOUT_S = 900  # model loads can be slow; past this the cluster most likely lacks resources

_POOLS: dict[str, ShardPool] = {}


class ShardPool:
    def __init__(self, settings: RunSettings, layout: Layout) -> None:
        import ray

        from ray_cluster.actor import ShardWorker

        self.settings, self.layout = settings, layout
        remote = ray.remote(ShardWorker).options(
            num_cpus=layout.num_cpus,
            num_gpus=layout.num_gpus,
            max_restarts=ACTOR_MAX_RESTARTS,
            max_task_retries=0,  # we re-submit ourselves, to any actor, with our own bound
        )
        payload = settings.model_dump_json()
        self.actors = [remote.remote(payload, layout.num_cpus) for _ in range(layout.actors)]
        self.actor_infos = self._wait_ready()

    def _wait_ready(self) -> list[dict]:
        import ray

        refs = [a.info.remote() for a in self.actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=STARTUP_TIMEOUT_S)
        if len(ready) < len(refs):
            raise FatalError(
                f"only {len(ready)} of {len(refs)} actors started within {STARTUP_TIMEOUT_S}s; the cluster may "
                f"not have {self.layout.num_cpus:g} CPUs/{self.layout.num_gpus:g} GPUs free per actor "
                f"(resources: {ray.cluster_resources()}); lower --actors or add nodes"
            )
        try:
            return ray.get(refs)
        except ray.exceptions.RayError as exc:
            raise FatalError(f"the shard actors failed to start: {_root_message(exc)}") from exc

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001 - already gone
                pass

    def run(
        self, shards: list[dict], staging: str, on_done: Callable[[dict], None] | None = None
    ) -> tuple[dict[str, dict], dict[str, str]]:
        """Process shards; returns (stats by shard id, error by shard id for shards that failed for good)."""
        import ray

        pending = collections.deque(shards)
        attempts: collections.Counter[str] = collections.Counter()
        inflight: dict[ray.ObjectRef, tuple[int, dict]] = {}
        load = [0] * len(self.actors)
        alive = set(range(len(self.actors)))
        actor_failures: collections.Counter[int] = collections.Counter()
        done: dict[str, dict] = {}
        failed: dict[str, str] = {}
        cap = self.settings.max_inflight_per_actor
        while pending or inflight:
            while pending and alive:
                i = min(alive, key=lambda k: load[k])
                if load[i] >= cap:
                    break
                shard = pending.popleft()
                inflight[self.actors[i].process_shard.remote(shard, staging)] = (i, shard)
                load[i] += 1
            if not inflight:
                for s in pending:
                    failed[s["shard_id"]] = "no live actors left"
                raise FatalError(
                    f"all shard actors died; {len(pending)} shards not processed; see the Ray logs"
                )
            [ref], _ = ray.wait(list(inflight), num_returns=1)
            i, shard = inflight.pop(ref)
            load[i] -= 1
            try:
                stats = ray.get(ref)
            except ray.exceptions.RayError as exc:
                sid = shard["shard_id"]
                attempts[sid] += 1
                if isinstance(exc, ray.exceptions.RayActorError):
                    actor_failures[i] += 1
                    if actor_failures[i] > ACTOR_MAX_RESTARTS:
                        alive.discard(i)
                msg = _root_message(exc)
                if attempts[sid] <= self.settings.shard_retries:
                    log.warning("shard %s failed (attempt %d): %s; retrying", sid, attempts[sid], msg)
                    pending.appendleft(shard)
                else:
                    log.error("shard %s failed for good after %d attempts: %s", sid, attempts[sid], msg)
                    failed[sid] = msg
                continue
            done[shard["shard_id"]] = stats
            if on_done:
                on_done(stats)
        return done, failed


def _root_message(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    # Ray wraps the remote traceback; its last line is the actual error
    return text[-1][:500] if text else type(exc).__name__


def _pool_key(settings: RunSettings, layout: Layout) -> str:
    keep = settings.model_dump(mode="json", exclude={"inputs", "out", "date", "force"})
    return hashlib.sha256(repr((sorted(keep.items()), layout)).encode()).hexdigest()


def get_pool(settings: RunSettings) -> ShardPool:
    """Connect to Ray and return a pool; reused across runs in one process (models stay loaded)."""
    connect(settings.ray_address)
    layout = plan_layout(settings.actors, settings.gpu_fraction)
    key = _pool_key(settings, layout)
    if key not in _POOLS:
        for old in list(_POOLS.values()):  # one pool at a time: free the old actors' resources
            old.shutdown()
        _POOLS.clear()
        _POOLS[key] = ShardPool(settings, layout)
    return _POOLS[key]


def shutdown_pools() -> None:
    for p in list(_POOLS.values()):
        p.shutdown()
    _POOLS.clear()
