"""One writer per partition: a lease object kept on the output storage itself.

`OUT/_leases/date=D.json` names its owner (host, pid, run id) and carries a token that changes on every
write. Every run of a partition (`xlmflow run`, the corpus flow, daily, backfill, deployments) holds it
from before it reads the manifest until after its commit and cleanup, so two runs never interleave.

- acquire: an atomic create-if-absent (S3 `If-None-Match: *`; locally a create under `flock`);
- heartbeat: a thread rewrites the lease every ttl/3, conditional on the token it last wrote;
- expiry: on S3 by the object's server-side LastModified against the server's own `Date` header, never
  by comparing host clocks; locally by the file's mtime, or at once when the owner's process is gone;
- takeover of an expired lease is a conditional overwrite of the token seen, so two takers cannot both win;
- fencing: `check()` renews conditionally right before the commit, so an owner that stalled past its
  expiry and lost the lease fails cleanly instead of committing over the new owner;
- release: a conditional delete; a lease someone else took over is left alone.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from xlmflow import storage
from xlmflow.errors import FatalError
from xlmflow.reaper import proc_start

log = logging.getLogger(__name__)


class LeaseConflict(Exception):
    """A conditional write lost: the object exists, or its token is not the one we saw."""


class LeaseHeldError(FatalError):
    """Another live run holds the partition and did not finish within --lock-timeout."""


class LeaseLostError(FatalError):
    """This run's lease expired and another run took it over: this run must not commit."""


def lease_uri(out: str, date: str) -> str:
    return storage.join(out, "_leases", f"date={date}.json")


@dataclass
class Seen:
    """A lease as read: its body, the token to make conditional writes against, and its age."""

    body: dict
    token: str
    age_s: float

    @property
    def expired(self) -> bool:
        return self.age_s > float(self.body.get("ttl_s", 0)) or not _owner_alive(self.body)

    def describe(self) -> str:
        b = self.body
        return (
            f"run {b.get('run_id', '?')} (host {b.get('host', '?')}, pid {b.get('pid', '?')}, "
            f"since {b.get('acquired_at', '?')}, last renewed {self.age_s:.0f}s ago, ttl {b.get('ttl_s')}s)"
        )


# ---- backends: the four conditional operations, on S3 and on a local directory ---------------------------


class S3Backend:
    """Conditional PUT/DELETE on S3 (If-None-Match / If-Match), read with the server's clock."""

    def __init__(self, uri: str) -> None:
        # lazy: boto3 loads its service models; only S3 paths need it
        import boto3

        bucket, _, key = uri.split("://", 1)[1].partition("/")
        self.bucket, self.key = bucket, key
        # boto3 reads AWS_ENDPOINT_URL and credentials from the environment, as s3fs does
        self.s3 = boto3.client("s3")

    def _conflict(self, exc: Exception) -> bool:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        status = getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey") or status in (
            409,
            412,
        )

    def read(self) -> Seen | None:
        # lazy: botocore loads its service models; only S3 paths need it
        from botocore.exceptions import ClientError

        try:
            r = self.s3.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        body = json.loads(r["Body"].read())
        date_hdr = r["ResponseMetadata"]["HTTPHeaders"].get("date")
        now = email.utils.parsedate_to_datetime(date_hdr) if date_hdr else dt.datetime.now(dt.UTC)
        # both instants come from the server: no host clock is involved
        age = (now - r["LastModified"]).total_seconds()
        return Seen(body, r["ETag"], max(0.0, age))

    def create(self, body: dict) -> str:
        return self._put(body, IfNoneMatch="*")

    def replace(self, body: dict, token: str) -> str:
        return self._put(body, IfMatch=token)

    def _put(self, body: dict, **cond: str) -> str:
        # lazy: botocore loads its service models; only S3 paths need it
        from botocore.exceptions import ClientError

        try:
            r = self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=json.dumps(body).encode(), **cond)
        except ClientError as exc:
            if self._conflict(exc):
                raise LeaseConflict(str(exc)) from exc
            raise
        return r["ETag"]

    def delete(self, token: str | None) -> None:
        # lazy: botocore loads its service models; only S3 paths need it
        from botocore.exceptions import ClientError

        try:
            self.s3.delete_object(Bucket=self.bucket, Key=self.key, **({"IfMatch": token} if token else {}))
        except ClientError as exc:
            if self._conflict(exc):
                raise LeaseConflict(str(exc)) from exc
            raise


class LocalBackend:
    """The same operations on a local file; read-compare-write happens under an exclusive flock of the
    `_leases` directory (held for microseconds, so one lock for all dates costs nothing)."""

    def __init__(self, path: str) -> None:
        self.path = path  # its folder is made by `create`: looking at a lease writes nothing

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # the lock is on the `_leases` directory itself: a lock file would be left in the output
        fd = os.open(os.path.dirname(self.path), os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _read(self) -> Seen | None:
        try:
            with open(self.path, encoding="utf-8") as f:
                body = json.load(f)
            age = time.time() - os.stat(self.path).st_mtime  # one host: its clock is the only clock
        except FileNotFoundError:
            return None
        return Seen(body, body["token"], max(0.0, age))

    def read(self) -> Seen | None:
        if not os.path.isdir(os.path.dirname(self.path)):
            return None  # no lease was ever taken here
        with self._locked():
            return self._read()

    def _write(self, body: dict) -> str:
        token = uuid.uuid4().hex
        storage.write_bytes(self.path, json.dumps({**body, "token": token}).encode())  # temp + rename
        return token

    def create(self, body: dict) -> str:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with self._locked():
            if os.path.exists(self.path):
                raise LeaseConflict(f"{self.path} exists")
            return self._write(body)

    def replace(self, body: dict, token: str) -> str:
        with self._locked():
            seen = self._read()
            if seen is None or seen.token != token:
                raise LeaseConflict(f"{self.path} changed")
            return self._write(body)

    def delete(self, token: str | None) -> None:
        if not os.path.isdir(os.path.dirname(self.path)):
            return
        with self._locked():
            seen = self._read()
            if seen is None:
                return
            if token is not None and seen.token != token:
                raise LeaseConflict(f"{self.path} changed")
            os.unlink(self.path)


def backend_for(out: str, date: str) -> S3Backend | LocalBackend:
    uri = lease_uri(out, date)
    if uri.startswith("s3://"):
        return S3Backend(uri)
    if storage.is_remote(uri):
        raise FatalError(f"partition leases support local directories and s3:// only, not {out!r}")
    return LocalBackend(uri)


# ---- owner liveness ----------------------------------------------------------------------------------------


def _owner_alive(body: dict) -> bool:
    """False only when we can prove it: the owner ran on this host and its process is gone (or reused)."""
    if body.get("host") != socket.gethostname() or not os.path.isdir("/proc"):
        return True
    start = proc_start(int(body.get("pid", 0)))
    return start is not None and start == body.get("pid_start", start)


# ---- the lease ----------------------------------------------------------------------------------------------


class PartitionLease:
    """Hold the lease of (out, date) for one run; use as a context manager or acquire()/release()."""

    def __init__(self, out: str, date: str, run_id: str, ttl: float, backend=None) -> None:  # noqa: ANN001
        self.out, self.date, self.run_id, self.ttl = out, date, run_id, float(ttl)
        self.backend = backend or backend_for(out, date)
        self.token: str | None = None
        self.lost: str | None = None
        self._stop = threading.Event()
        self._io = threading.Lock()  # the heartbeat and check() never write at once
        self._thread: threading.Thread | None = None

    def _body(self) -> dict:
        pid = os.getpid()
        return {
            "out": self.out,
            "date": self.date,
            "run_id": self.run_id,
            "host": socket.gethostname(),
            "pid": pid,
            "pid_start": proc_start(pid),
            "ttl_s": self.ttl,
            "acquired_at": getattr(self, "_acquired_at", None),
            "write_id": uuid.uuid4().hex,  # tells this write from any other, when its answer is lost
        }

    def _write(self, op: Callable[..., str], *args: str) -> None:
        """A conditional write of a fresh body. Its answer may be lost after it landed (the client's
        retry then meets its own write and is refused, or the error is a 500): on any failure the lease
        is read back, and if it holds this very write, the write succeeded."""
        body = self._body()
        self._last_write = body["write_id"]
        try:
            self.token = op(body, *args)
        except Exception:
            seen = None
            for attempt in range(3):  # the store that lost an answer may still be flaky
                try:
                    seen = self.backend.read()
                    break
                except Exception:  # noqa: BLE001 - unknown outcome: report the write's own error
                    time.sleep(0.5 * 2**attempt)
            if not self._is_last_write(seen):
                raise

    def _is_last_write(self, seen: Seen | None) -> bool:
        """Whether the lease as read is this object's latest write (then its token is ours)."""
        if seen is None or seen.body.get("write_id") != getattr(self, "_last_write", None):
            return False
        self.token = seen.token
        return True

    def acquire(self, timeout: float, on_wait: Callable[[str], None] | None = None) -> PartitionLease:
        """Take the lease, waiting up to `timeout` s for a live owner; raise LeaseHeldError after that."""
        deadline = time.monotonic() + timeout
        self._acquired_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        waited = False
        while True:
            try:
                self._write(self.backend.create)
                break
            except LeaseConflict:
                pass
            seen = self.backend.read()
            if seen is None:
                continue  # released between our create and read: try again at once
            if self._is_last_write(seen):
                break  # our write landed after all (its read-back had failed)
            if seen.expired:
                try:
                    self._write(self.backend.replace, seen.token)
                    log.warning("partition %s: took over the expired lease of %s", self.date, seen.describe())
                    break
                except LeaseConflict:
                    continue  # another taker won, or the owner renewed just now
            if not waited and on_wait:
                on_wait(
                    f"waiting for lease on partition {self.date} of {self.out}, held by {seen.describe()}"
                )
            waited = True
            if time.monotonic() >= deadline:
                raise LeaseHeldError(
                    f"partition {self.date} of {self.out} is held by {seen.describe()}; gave up after "
                    f"{timeout:g}s (--lock-timeout). Wait for that run to finish, or, if it is gone, "
                    f"`xlmflow lease break --out {self.out} --date {self.date}`"
                )
            time.sleep(min(1.0, max(0.05, self.ttl / 10)))
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease-{self.date}", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        with self._io:
            if self.lost:
                raise LeaseLostError(self.lost)
            try:
                self._write(self.backend.replace, self.token)
            except LeaseConflict:
                seen = self.backend.read()
                if self._is_last_write(seen):
                    return  # our renewal landed after all (its read-back had failed)
                self.lost = (
                    f"this run ({self.run_id}) lost the lease of partition {self.date} of {self.out} "
                    f"(now {'held by ' + seen.describe() if seen else 'released'}): it stalled past its "
                    f"{self.ttl:g}s lease and another run took over; nothing of this run was committed"
                )
                raise LeaseLostError(self.lost) from None

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self._renew()
            except LeaseLostError as exc:
                log.error("%s", exc)
                return
            except Exception as exc:  # noqa: BLE001 - a flaky renewal is retried at the next beat
                log.warning("partition %s: lease renewal failed (%s); retrying", self.date, exc)

    def check(self) -> None:
        """Fence: renew now, conditionally; raises LeaseLostError if another run owns the partition."""
        self._renew()

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        if self.token is None or self.lost:
            return
        with self._io:
            try:
                self.backend.delete(self.token)
            except LeaseConflict:
                pass  # someone took it over: theirs now
            except Exception as exc:  # noqa: BLE001 - an unreleased lease expires by itself
                log.warning(
                    "partition %s: could not release the lease (%s); it expires in %gs",
                    self.date,
                    exc,
                    self.ttl,
                )
            self.token = None

    def __enter__(self) -> PartitionLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def show(out: str, date: str) -> Seen | None:
    return backend_for(out, date).read()


def break_lease(out: str, date: str) -> Seen | None:
    """Remove the lease whatever its owner (operators only); returns what was removed."""
    b = backend_for(out, date)
    seen = b.read()
    if seen is not None:
        with contextlib.suppress(LeaseConflict):
            b.delete(seen.token)
    return seen
