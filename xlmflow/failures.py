"""Turn whatever ends a command into an exit code and one line that says what to change.

Exit codes: 0 ok; 1 the run failed (storage, space, permissions, missing input or bucket, anything
unexpected); 2 the command as given cannot work (an option, model or URI must change); 3 the inputs of a
committed partition changed; 130 interrupted (SIGINT), 143 terminated (SIGTERM): xlmflow.interrupt.
"""

from __future__ import annotations

import errno
import logging
import re
import sys
from collections.abc import Iterator

from xlmflow.errors import ConfigError, FatalError, InputsChangedError, XlmflowError

EXIT_FAILED, EXIT_CONFIG, EXIT_INPUTS_CHANGED, EXIT_INTERRUPTED = 1, 2, 3, 130

# exceptions from these packages are storage/network failures that survived the clients' own retries
_STORAGE_PACKAGES = ("botocore", "aiobotocore", "s3fs", "aiohttp", "urllib3", "fsspec")
# errnos s3fs gives S3 server errors (SlowDown/503 -> EBUSY, InternalError -> EREMOTEIO, others -> EIO)
_REMOTE_ERRNOS = {errno.EBUSY, errno.EIO, getattr(errno, "EREMOTEIO", errno.EIO), errno.ETIMEDOUT}
# delta-rs raises object_store's errors as a plain OSError or DeltaError: known by their text only
_OBJECT_STORE = re.compile(r"Generic (S3|GCS|MicrosoftAzure|HTTP) error")
_OBJECT_STORE_BUCKET = re.compile(r"<Code>NoSuchBucket</Code>.*?(?:<BucketName>([^<]*)</BucketName>|$)", re.S)
# delta-rs colours its error chains (ESC[31m↳ESC[0m between causes): escape sequences and other control
# characters out, the arrows as plain separators
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_STORAGE_HINT = (
    "check the endpoint and credentials (AWS_ENDPOINT_URL, AWS_PROFILE or AWS_ACCESS_KEY_ID) and "
    "rerun the same command: it resumes from finished shards"
)


def unwrap(exc: BaseException) -> BaseException:
    """The exception behind Ray's task errors (`.cause`); Prefect re-raises a flow's own exception as is."""
    for _ in range(10):
        cause = getattr(exc, "cause", None)
        if type(exc).__module__.startswith("ray.") and isinstance(cause, BaseException):
            exc = cause
        else:
            break
    return exc


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)


def _code(e: BaseException) -> str | None:
    resp = getattr(e, "response", None)
    return (resp.get("Error") or {}).get("Code") if isinstance(resp, dict) else None


def _is_storage(e: BaseException) -> bool:
    return (
        type(e).__module__.split(".")[0] in _STORAGE_PACKAGES
        or isinstance(e, ConnectionError | TimeoutError)
        or (isinstance(e, OSError) and e.errno in _REMOTE_ERRNOS)
        or "AWS Error" in str(e)  # pyarrow's S3 client
        or bool(_OBJECT_STORE.search(str(e)))  # delta-rs
    )


def _denied(e: BaseException) -> bool:
    return isinstance(e, PermissionError) or _code(e) in ("AccessDenied", "403")


def _transient(chain: list[BaseException]) -> bool:
    """A storage failure that a retry later may fix (not a refusal or a missing object)."""
    if any(_denied(e) or isinstance(e, FileNotFoundError) for e in chain):
        return False
    return any(_is_storage(e) for e in chain)


def _missing_bucket(chain: list[BaseException], out: str | None) -> str | None:
    for e in chain:
        m = _OBJECT_STORE_BUCKET.search(str(e)) if _OBJECT_STORE.search(str(e)) else None
        if m:
            return m.group(1) or (out[5:].split("/", 1)[0] if out and out.startswith("s3://") else "?")
        if _code(e) == "NoSuchBucket" or (
            isinstance(e, FileNotFoundError) and "bucket does not exist" in str(e).lower()
        ):
            named = (getattr(e, "response", None) or {}).get("Error", {}).get("BucketName")
            if named:
                return named
            if out and out.startswith("s3://"):
                return out[5:].split("/", 1)[0]
            return "?"
    return None


def explain(exc: BaseException, out: str | None = None) -> tuple[int, str]:
    """(exit code, message after 'xlmflow: ') for an exception that ended a command."""
    code, msg = _explain(unwrap(exc), out)
    msg = _CONTROL.sub(" ", re.sub(r"\s*↳\s*", ": ", _ANSI.sub("", msg)))
    return code, msg


def _explain(exc: BaseException, out: str | None) -> tuple[int, str]:
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted; rerun the same command to resume from finished shards"
    if isinstance(exc, InputsChangedError):
        return EXIT_INPUTS_CHANGED, f"error: {exc}"
    if isinstance(exc, ConfigError):
        return EXIT_CONFIG, f"configuration error: {exc}"
    chain = list(_chain(exc))
    full = next((e for e in chain if isinstance(e, OSError) and e.errno == errno.ENOSPC), None)
    if full is not None or "No space left on device" in str(exc):
        where = getattr(full, "filename", None) or (f"under {out}" if out else "a local file")
        return EXIT_FAILED, (
            f"error: no space left on device while writing {where}; free space or choose another --out; "
            "rerun resumes from finished shards"
        )
    bucket = _missing_bucket(chain, out)
    if bucket:
        return (
            EXIT_FAILED,
            f"error: bucket {bucket} does not exist or is not reachable; create it or fix --out",
        )
    if isinstance(exc, XlmflowError):  # raised on purpose: its message already says what to do
        if _transient(chain[1:]):
            return EXIT_FAILED, f"error: storage error after retries: {exc}; {_STORAGE_HINT}"
        return EXIT_FAILED, f"error: {exc}"
    if any(_denied(e) for e in chain):
        return EXIT_FAILED, (
            f"error: permission denied: {exc}; fix the access rights (or credentials) of that path, "
            "or choose another --out"
        )
    if isinstance(exc, FileNotFoundError):
        return EXIT_FAILED, f"error: not found: {exc}; check the paths given, then rerun"
    if _transient(chain):
        return (
            EXIT_FAILED,
            f"error: storage error after retries: {type(exc).__name__}: {exc}; {_STORAGE_HINT}",
        )
    return (
        EXIT_FAILED,
        f"error: unexpected error {type(exc).__name__}: {exc}; rerun with --debug for the traceback",
    )


def portable(exc: BaseException) -> BaseException:
    """The exception to raise out of a Ray task in place of `exc`: Ray pickles the exception a task
    raised without its chain (__cause__), so the chain is read here, where it still exists, and a
    failure whose meaning lies in it (storage after retries, no space, no bucket, anything unexpected)
    travels as a FatalError carrying the same one-line message `explain` would give."""
    if isinstance(exc, ConfigError | InputsChangedError | KeyboardInterrupt):
        return exc
    if isinstance(exc, XlmflowError) and len(list(_chain(exc))) == 1:
        return exc
    _, msg = explain(exc)
    return FatalError(msg.removeprefix("error: "))


class _NoTraceback(logging.Formatter):
    """Formats a record as its inner formatter would, minus the traceback (kept for --debug)."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def hide_console_tracebacks() -> None:
    """Keep tracebacks that libraries log (Prefect logs a failed flow's) off the console.

    Only console handlers change: Prefect's API handler still sends the traceback to the server, where
    the flow run's logs show it.
    """
    for h in _stream_handlers():
        if not isinstance(h.formatter, _NoTraceback):
            h.setFormatter(_NoTraceback(h.formatter))


def silence_console() -> None:
    """Nothing more on the terminal from any logger, so the error line stays the last one (Prefect's
    services may still log while they drain at exit). Only the handlers that write to stdout or stderr
    change: the logs still reach Prefect's server, files and any other handler."""
    consoles = {id(x) for x in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__) if x is not None}
    for h in [*_stream_handlers(), logging.lastResort]:
        if h is not None and id(getattr(h, "stream", None)) in consoles:
            h.setLevel(logging.CRITICAL + 1)


def _stream_handlers() -> Iterator[logging.StreamHandler]:
    """The stream handlers of every logger, the root's included."""
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        for h in lg.handlers:
            if isinstance(h, logging.StreamHandler):
                yield h
