"""The error taxonomy (after dolma's core/errors.py): every failure is one of four kinds.

- ConfigError: the user must change an option or the environment; the message says what.
- FatalError: the run cannot go on (unreadable input, no write access); abort with a clear message.
  SystemicError is the one a processor raises when it fails on too many rows to be bad documents.
Failures of one row or one shard are not exceptions of the run: they become rejects with a reason
(`processing_error`, `shard_failed`); transient storage and actor failures are retried a bounded
number of times where they happen (the S3 client, the actor pool).

InputsChangedError is not a failure of the run: a committed partition's inputs differ from the ones it
was computed from, and recomputing it is the user's call (--force).
"""


class XlmflowError(Exception):
    """Base of all errors raised on purpose by xlmflow."""


class ConfigError(XlmflowError):
    """A setting or input is wrong; the message tells the user what to change."""


class FatalError(XlmflowError):
    """The run cannot continue."""


class SystemicError(FatalError):
    """A processor failed on more rows than isolated bad documents explain (a bug, a wrong model)."""


class InputsChangedError(XlmflowError):
    """The inputs of an already committed partition changed; it was left as it is (exit status 3)."""
