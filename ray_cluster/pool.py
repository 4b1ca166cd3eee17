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
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from xlmflow.errors import FatalError, SystemicError, XlmflowError
from xlmflow.failures import unwrap
from xlmflow.ray_cluster.actor import ShardWorker
from xlmflow.ray_cluster.cluster import Layout, connect, plan_layout
from xlmflow.settings import RunSettings

log = logging.getLogger(__name__)

ACTOR_MAX_RESTARTS = 3  # a restarted actor reloads its models; past this the actor is dropped
PROBE_INTERVAL_S = 0.5  # how often a restarting actor is asked whether it is back

_POOLS: dict[str, ShardPool] = {}


@dataclass
class _Round:
    """The scheduling state of one `ShardPool.run`: what is queued, in flight, restarting and finished."""

    pending: collections.deque
    n_shards: int
    load: list[int]  # per actor: the load taken by its shards in flight
    alive: set[int]  # actors not given up on
    attempts: collections.Counter[str] = field(default_factory=collections.Counter)
    inflight: dict = field(default_factory=dict)  # ref -> (actor, shard, load taken)
    probes: dict = field(default_factory=dict)  # readiness probes of restarting actors: ref -> actor
    restarting: dict[int, tuple[float, float]] = field(default_factory=dict)  # actor -> (since, next probe)
    done: dict[str, dict] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # shards whose actors kept dying
    errors: dict[str, str] = field(default_factory=dict)  # shards that raised: the run fails


class ShardPool:
    def __init__(self, settings: RunSettings, layout: Layout) -> None:
        import ray  # lazy: ray takes seconds to import; only starting actors needs it

        self.settings, self.layout = settings, layout
        remote = ray.remote(ShardWorker).options(
            num_cpus=layout.num_cpus,
            num_gpus=layout.num_gpus,
            max_restarts=ACTOR_MAX_RESTARTS,
            max_task_retries=0,  # we re-submit ourselves, to any actor, with our own bound
        )
        payload = settings.model_dump_json()
        # created now, waited for on first use: the actors load their models meanwhile
        self.actors = [remote.remote(payload, layout.num_cpus) for _ in range(layout.actors)]
        self._info_refs = [a.info.remote() for a in self.actors]
        self._infos: list[dict] | None = None
        self.prestarted = False  # started before the flow, by `prestart`

    @property
    def actor_infos(self) -> list[dict]:
        """What each actor reports once its models are loaded (waits for that)."""
        if self._infos is None:
            try:
                self._infos = self._wait_ready()
            except XlmflowError:
                self.shutdown()  # a later get_pool starts afresh
                for key in [k for k, p in _POOLS.items() if p is self]:
                    del _POOLS[key]
                raise
        return self._infos

    def _wait_ready(self) -> list[dict]:
        # lazy: ray takes about a second to import; the CLI checks its arguments first
        import ray

        refs = self._info_refs
        timeout = self.settings.actor_start_timeout
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        if len(ready) < len(refs):
            raise FatalError(
                f"only {len(ready)} of {len(refs)} shard actors started within --actor-start-timeout "
                f"{timeout:g}s, loading {_what_loads(self.settings)}: a model that loads slowly or hangs "
                f"(check its files), or a cluster without {self.layout.num_cpus:g} CPUs/"
                f"{self.layout.num_gpus:g} GPUs free per actor (resources: {ray.cluster_resources()}); "
                "raise --actor-start-timeout, lower --actors or add nodes"
            )
        infos, failed = [], []
        for ref in refs:  # each one: an error left unread is printed, traceback and all, by Ray
            try:
                infos.append(ray.get(ref))
            except ray.exceptions.RayError as exc:
                failed.append(exc)
        if failed:
            err = unwrap(failed[0])
            cause = getattr(err, "cause", None)  # Ray's error class may subclass the cause's
            err = cause if isinstance(cause, XlmflowError) else err
            if isinstance(err, XlmflowError):  # the actor's setup said what failed (instance, model)
                raise err
            raise FatalError(f"the shard actors failed to start: {_root_message(failed[0])}") from failed[0]
        return infos

    def shutdown(self) -> None:
        # lazy: ray takes about a second to import; the CLI checks its arguments first
        import ray

        for a in self.actors:
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001 - already gone
                pass

    def run(
        self,
        shards: list[dict],
        staging: str,
        on_done: Callable[[dict], None] | None = None,
        feed=None,  # noqa: ANN001 - more shards as they are staged: .poll(waiting), .exhausted, .refs
    ) -> tuple[dict[str, dict], dict[str, str]]:
        """Process shards; returns (stats by shard id, error by shard id for shards whose actors kept dying).

        A shard that kills its actor on every attempt (a poison document: OOM kill, segfault) fails for good
        and its rows become `shard_failed` rejects, so one bad shard does not block the partition. A shard
        that raises (storage, credentials, config) fails the run once every other shard is finished: that
        error is systemic, and committing its rows as rejects would hide it. Finished shards are kept, so
        the rerun resumes.

        After an actor dies, Ray restarts it (reloading models); until a readiness probe answers it gets no
        work, so its restart does not burn the retries of the shards re-queued behind it. A shard that was
        in flight on a dying actor is a suspect: it is retried alone on an idle actor, so an innocent shard
        is not failed for sharing an actor with a poison one.
        """
        import ray  # lazy: ray takes seconds to import; only a run that processes shards needs it

        r = _Round(
            collections.deque(shards), len(shards), [0] * len(self.actors), set(range(len(self.actors)))
        )
        cap = self.settings.max_inflight_per_actor
        while r.pending or r.inflight or (feed is not None and not feed.exhausted):
            if feed is not None and not feed.exhausted:
                new = feed.poll(len(r.pending))
                r.n_shards += len(new)
                r.pending.extend(new)
            self._submit(r.pending, r.attempts, r.inflight, r.load, r.alive, r.restarting, cap, staging)
            now = time.monotonic()
            for i, (_, due) in list(r.restarting.items()):
                if due <= now and i not in r.probes.values():
                    r.probes[self.actors[i].info.remote()] = i
            if not r.inflight and not r.probes and not r.restarting and (r.pending or not r.alive):
                raise FatalError(
                    f"all shard actors died; {len(r.pending)} shards not processed; see the Ray logs"
                )
            staged = feed.refs if feed is not None else []
            waits = [*r.inflight, *r.probes, *staged]
            if not waits:  # only actors restarting: look again shortly
                time.sleep(PROBE_INTERVAL_S)
                continue
            ready, _ = ray.wait(waits, num_returns=1, timeout=1.0)
            if ready and ready[0] not in staged:
                self._answered(r, ready[0], on_done)
        if r.errors:
            sid, msg = next(iter(r.errors.items()))
            raise FatalError(
                f"{len(r.errors)} of {r.n_shards} shards failed (first: {sid}: {msg}); the {len(r.done)} "
                "finished shards are kept: fix the cause and rerun the same command to resume"
            )
        return r.done, r.failed

    def _answered(self, r: _Round, ref, on_done: Callable[[dict], None] | None) -> None:  # noqa: ANN001
        """A probe or a shard came back: note the actor's state, or the shard's stats or failure."""
        import ray  # lazy: as in run

        if ref in r.probes:
            self._probe_answered(r.probes.pop(ref), ref, r.restarting, r.alive)
            return
        i, shard, taken = r.inflight.pop(ref)
        r.load[i] -= taken
        try:
            stats = ray.get(ref)
        except ray.exceptions.RayError as exc:
            self._shard_failed(r, i, shard, exc)
            return
        r.done[shard["shard_id"]] = stats
        if on_done:
            on_done(stats)

    def _shard_failed(self, r: _Round, i: int, shard: dict, exc: BaseException) -> None:
        """Retry the shard, or fail it for good (its actor kept dying) or for the run (it raised)."""
        import ray  # lazy: as in run

        sid = shard["shard_id"]
        systemic = _systemic(exc)
        if systemic:  # retrying or going on only costs time
            raise FatalError(
                f"{systemic}. Nothing was committed; the {len(r.done)} finished shards are kept: "
                "fix the cause (model, processor) and rerun the same command to resume"
            ) from None
        r.attempts[sid] += 1
        died = isinstance(exc, ray.exceptions.RayActorError)
        if died and i in r.alive and i not in r.restarting:
            now = time.monotonic()
            r.restarting[i] = (now, now + PROBE_INTERVAL_S)
        msg = _root_message(exc)
        if r.attempts[sid] <= self.settings.shard_retries:
            log.warning("shard %s failed (attempt %d): %s; retrying", sid, r.attempts[sid], msg)
            r.pending.appendleft(shard)
        else:
            log.error("shard %s failed for good after %d attempts: %s", sid, r.attempts[sid], msg)
            (r.failed if died else r.errors)[sid] = msg

    def _submit(self, pending, attempts, inflight, load, alive, restarting, cap, staging) -> None:  # noqa: ANN001
        """Hand queued shards to ready actors, least loaded first; a suspect shard runs alone."""
        while pending:
            ready = [k for k in alive if k not in restarting and load[k] < cap]
            if not ready:
                return
            shard = pending[0]
            if attempts[shard["shard_id"]]:
                idle = [k for k in ready if load[k] == 0]
                if not idle:
                    return
                i, taken = idle[0], cap  # occupy the whole actor
            else:
                i, taken = min(ready, key=lambda k: load[k]), 1
            pending.popleft()
            inflight[self.actors[i].process_shard.remote(shard, staging)] = (i, shard, taken)
            load[i] += taken

    def _probe_answered(self, i: int, ref, restarting: dict, alive: set) -> None:  # noqa: ANN001
        # lazy: ray takes about a second to import; the CLI checks its arguments first
        import ray

        try:
            ray.get(ref)
        except ray.exceptions.ActorDiedError as exc:  # out of restarts: gone for good
            log.error("actor %d is gone for good: %s", i, _root_message(exc))
            alive.discard(i)
            restarting.pop(i, None)
            return
        except ray.exceptions.RayError as exc:  # still restarting, unless it has taken too long
            since, timeout = restarting[i][0], self.settings.actor_start_timeout
            if time.monotonic() - since > timeout:
                log.error("actor %d did not come back within %gs: %s", i, timeout, _root_message(exc))
                alive.discard(i)
                restarting.pop(i, None)
            else:
                restarting[i] = (since, time.monotonic() + PROBE_INTERVAL_S)
            return
        log.info("actor %d is back after a restart", i)
        restarting.pop(i, None)


def _what_loads(settings: RunSettings) -> str:
    """The processor instances an actor sets up, with their models: what a slow start is waiting for."""
    return ", ".join(
        f"{s.name} ({s.type}, model {s.options['model']})"
        if s.options.get("model")
        else f"{s.name} ({s.type})"
        for s in settings.processors
    )


def _systemic(exc: BaseException) -> str | None:
    """The message of a SystemicError behind Ray's task error, None for any other failure."""
    err = unwrap(exc)
    cause = getattr(err, "cause", None)  # Ray's error class may subclass the cause's: take the cause
    err = cause if isinstance(cause, SystemicError) else err
    return str(err.args[0]) if isinstance(err, SystemicError) and err.args else None


def _root_message(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    # Ray wraps the remote traceback; its last line is the actual error
    return text[-1][:500] if text else type(exc).__name__


def _pool_key(settings: RunSettings, layout: Layout) -> str:
    keep = settings.model_dump(mode="json", exclude={"inputs", "out", "date", "force"})
    return hashlib.sha256(repr((sorted(keep.items()), layout)).encode()).hexdigest()


def get_pool(settings: RunSettings) -> ShardPool:
    """Connect to Ray and return a pool; reused across runs in one process (models stay loaded).

    Its actors may still be loading their models: `actor_infos` waits for them."""
    connect(settings.ray_address)
    layout = plan_layout(settings.actors, settings.gpu_fraction)
    key = _pool_key(settings, layout)
    if key not in _POOLS:
        for old in list(_POOLS.values()):  # one pool at a time: free the old actors' resources
            old.shutdown()
        _POOLS.clear()
        _POOLS[key] = ShardPool(settings, layout)
    return _POOLS[key]


def prestart(settings: RunSettings) -> None:
    """Connect to Ray and start the actors for `settings` now, without waiting for their models: the
    loads overlap whatever the caller does next (Prefect's start, ingest), and the flow's `get_pool` with
    the same model settings gets this pool."""
    get_pool(settings).prestarted = True


def shutdown_pools() -> None:
    for p in list(_POOLS.values()):
        p.shutdown()
    _POOLS.clear()
