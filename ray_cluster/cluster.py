"""Connect to Ray (an existing cluster or a local one) and decide the actor layout."""

from __future__ import annotations

import logging
import os
import re
import signal
import tempfile
import threading
import time
from dataclasses import dataclass

from xlmflow import reaper, storage
from xlmflow.errors import ConfigError, FatalError

log = logging.getLogger(__name__)
IDLE_TASK_WORKERS = 2  # idle workers a local Ray keeps beyond one per CPU
CLIENT_ATTEMPTS = 3  # connections to a Ray Client proxy whose per-client server failed to start
CLIENT_START_FAILED = ("Starting Ray client server failed", "Proxy failed to Connect to backend")
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's node is 127.0.0.1 (its default off Linux)


@dataclass(frozen=True)
class Layout:
    actors: int
    num_cpus: float
    num_gpus: float


def cluster_address(address: str | None) -> str | None:
    """The Ray cluster a run joins: `address` (--ray-address), else RAY_ADDRESS; None starts a local Ray."""
    return address or os.environ.get("RAY_ADDRESS")


def local_temp_dir() -> str:
    """Where a local Ray keeps its sessions: a directory of this user's own, never Ray's shared default
    (/tmp/ray), which another user's Ray may own and where `ray start` leaves the address of its cluster."""
    base = os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()
    path = os.path.join(base, f"xlmflow-ray-{os.getuid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    if os.stat(path).st_uid != os.getuid():  # taken by someone else: one for this run alone
        path = tempfile.mkdtemp(prefix="xlmflow-ray-", dir=base)
    return path


def connect(address: str | None) -> None:
    """Join `address` (or RAY_ADDRESS), else start a local Ray; reuse an already-initialised one.

    Joining is never by accident: without an address a run starts its own Ray even on a host where
    `ray start` has run (it says so, and how to join that cluster instead)."""
    # lazy: ray takes about a second to import; the CLI checks its arguments first
    import ray

    if ray.is_initialized():
        return
    address = cluster_address(address)
    # ray.init replaces a SIGTERM handler with its own (sys.exit): the one in place (the CLI's, Prefect's)
    # decides how this process stops
    main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main else None
    try:
        if address:
            _join(address)
            log.info("joined the Ray cluster at %s", _joined_address(address))
        else:
            # Ray's own processes die with this one, but not all of theirs (its agents): the watchdog
            # stops whatever this process leaves behind, however it ends
            reaper.start()
            _start_local()
    except ConnectionError as exc:
        # not chained: a ConnectionError would make it read as a storage failure
        raise FatalError(f"cannot reach the Ray cluster at {address!r}: {exc}; check --ray-address") from None
    except RuntimeError as exc:
        msg = version_mismatch_message(address, str(exc))
        if msg is None:
            raise
        _disconnect()
        raise ConfigError(msg) from None
    finally:
        if callable(sigterm):
            signal.signal(signal.SIGTERM, sigterm)


def _join(address: str) -> None:
    """ray.init on an existing cluster, with a few more tries where a Ray Client proxy failed to start
    the server process it starts for each client: Ray forks that process from a thread while its other
    threads are in gRPC, and on a busy head the child can crash before it runs (a segfault in gRPC's
    fork handling, seen in the kernel log); a new connection gets a new process."""
    # lazy: ray takes about a second to import; the CLI checks its arguments first
    import ray

    for attempt in range(1, CLIENT_ATTEMPTS + 1):
        try:
            # no start-only option (_system_config, _temp_dir, include_dashboard): Ray refuses them here
            ray.init(address=address, log_to_driver=True)
            return
        except ConnectionError as exc:
            failed_start = any(m in str(exc) for m in CLIENT_START_FAILED)
            if attempt == CLIENT_ATTEMPTS or not address.startswith("ray://") or not failed_start:
                raise
            log.warning(
                "the Ray Client server at %s failed to start a server process for this run "
                "(try %d of %d); connecting again",
                address,
                attempt,
                CLIENT_ATTEMPTS,
            )
            time.sleep(attempt)


def version_mismatch_message(address: str | None, error: str) -> str | None:
    """One line naming both sides' versions, from Ray's multi-line "Version mismatch" error."""
    found = re.findall(r"Ray: (\S+)\s+Python: (\S+)", error)
    if not error.startswith("Version mismatch") or len(found) != 2:
        return None
    (ray_there, py_there), (ray_here, py_here) = found
    return (
        f"the Ray cluster at {address} runs Ray {ray_there} on Python {py_there}, this xlmflow Ray {ray_here} "
        f"on Python {py_here}: run xlmflow where both versions match the cluster's"
    )


def _disconnect() -> None:
    # lazy: ray takes about a second to import; the CLI checks its arguments first
    import ray

    try:
        ray.shutdown()
    except Exception:  # noqa: BLE001 - half connected: nothing more to release
        pass


def _start_local() -> None:
    """A throwaway Ray for this process alone: reachable from this machine only, exporting no metrics
    (unless RAY_enable_metrics_collection asks for them), and in a session of its own, so that a signal
    to the terminal's process group (Ctrl-C, `kill -- -PGID`) reaches the driver alone, which then
    stops it; its services still die with the driver (Ray's parent-death signal, the watchdog)."""
    # lazy: ray takes about a second to import; the CLI checks its arguments first
    import ray
    from ray._private import ray_constants, services, utils

    existing = utils.read_ray_address()  # what `ray start` on this host left for Ray's address=None
    if existing:
        log.warning(
            "a Ray cluster started on this host (%s) is left alone: this run starts its own; "
            "pass --ray-address auto to run on that cluster",
            existing,
        )
    config = {"num_workers_soft_limit": (os.cpu_count() or 1) + IDLE_TASK_WORKERS}
    if "RAY_enable_metrics_collection" not in os.environ:
        config["enable_metrics_collection"] = False

    base = services.ConsolePopen

    class OwnSession(base):
        def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
            super().__init__(*args, **{**kwargs, "start_new_session": True})

    # Ray takes the host's address as the node's, and its gRPC servers and agents then listen on every
    # interface; with clusters "disabled" (Ray's own switch for laptops) the node is 127.0.0.1 and they
    # bind loopback. Set for this start only (the processes it starts keep it): a later ray.init in
    # this process may join a real cluster
    switch, env = ray_constants.ENABLE_RAY_CLUSTER, os.environ.get(LOCAL_ONLY_ENV)
    ray_constants.ENABLE_RAY_CLUSTER, os.environ[LOCAL_ONLY_ENV] = False, "0"
    services.ConsolePopen = OwnSession
    try:
        # no dashboard: it costs seconds and a port, and the Prefect UI is our monitoring surface.
        # Ray keeps as many workers as CPUs and ends idle ones past that after a second; the actors
        # hold the CPUs, so the worker Ray prestarts was gone before the ingest task needed one
        # (1-2 CPU-s to start each): a few more may stay idle for the zero-CPU ingest/commit tasks
        # address "local": a new Ray even where ray.init() would join the cluster `ray start` recorded
        ray.init(
            address="local",
            include_dashboard=False,
            log_to_driver=True,
            _temp_dir=local_temp_dir(),
            _system_config=config,
        )
    finally:
        services.ConsolePopen = base
        ray_constants.ENABLE_RAY_CLUSTER = switch
        if env is None:
            os.environ.pop(LOCAL_ONLY_ENV, None)
        else:
            os.environ[LOCAL_ONLY_ENV] = env


def _joined_address(given: str) -> str:
    """The GCS address behind `auto`; a Ray Client address as given."""
    # lazy: ray takes about a second to import; the CLI checks its arguments first
    import ray

    if given.startswith("ray://"):
        return given
    try:
        return ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 - the address given is still a name for it
        return given


def node_id() -> str | None:
    """The Ray node this process runs on (recorded by tasks and actors), None outside Ray."""
    try:
        # lazy: ray takes about a second to import; outside Ray there is no node
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - outside Ray
        return None


def check_out_reachable(out: str, shared: bool = False) -> None:
    """Refuse a local --out when the cluster has nodes on other machines: their workers write the
    output files, and this machine's disk is not theirs (unless --shared-out says it is mounted at the
    same path on every node)."""
    # lazy: ray takes about a second to import; the CLI checks its arguments first
    import ray

    if storage.is_remote(out) or shared:
        return
    ips = {n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")}
    msg = foreign_out_message(out, ips, ray.util.get_node_ip_address())
    if msg:
        raise ConfigError(msg)


def foreign_out_message(out: str, node_ips: set[str], local_ip: str) -> str | None:
    others = sorted(node_ips - {local_ip})
    if not others:
        return None
    return (
        f"--out {out} is a local path, but the Ray cluster has nodes on other machines ({', '.join(others[:3])}) "
        "whose workers write the output files: use an s3:// --out, or pass --shared-out if this path is "
        "mounted at the same place on every node"
    )


def plan_layout(actors: int | None, gpu_fraction: float = 1.0) -> Layout:
    """One actor per GPU (or 1/gpu_fraction per GPU) when the cluster has GPUs, else CPU actors.

    CPUs are always declared: an actor holding an implicit CPU for its whole life starves other work
    on small machines.
    """
    # lazy: ray takes about a second to import; the CLI checks its arguments first
    import ray

    res = ray.cluster_resources()
    cpus, gpus = int(res.get("CPU", 1)), res.get("GPU", 0)
    # an actor runs on one node: never ask for more CPUs than the largest node has
    node = int(max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)) or cpus
    if gpus >= 1:
        max_actors = int(gpus / gpu_fraction)
        n = actors or max_actors
        if n > max_actors:
            raise ConfigError(f"--actors {n} needs {n * gpu_fraction:g} GPUs; the cluster has {gpus:g}")
        # GPU actors need a few CPUs for tokenization; never more than the node can give each
        return Layout(n, float(max(1, min(4, cpus // n, node))) if cpus >= n else cpus / n, gpu_fraction)
    n = actors or max(1, cpus // 4)
    if n > cpus:
        raise ConfigError(f"--actors {n} needs {n} CPUs; the cluster has {cpus}; lower --actors")
    return Layout(n, float(max(1, min(cpus // n, node))), 0.0)
