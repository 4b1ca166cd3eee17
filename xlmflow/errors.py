"""The error taxonomy (after dolma's core/errors.py): every failure is one of four kinds.

- ConfigError: the user must change an option or the environment; the message says what.
- FatalError: the run cannot go on (unreadable input, no write access); abort with a clear message.
- ShardError: this shard failed; its rows become rejects, other shards go on.
- RetryableError: a transient failure (network, actor death); retried a bounded number of times.

InputsChangedError is not a failure of the run: a committed partition's inputs differ from the ones it
was computed from, and recomputing it is the user's call (--force).
"""


class XlmflowError(Exception):
    """Base of all errors raised on purpose by xlmflow."""


class ConfigError(XlmflowError):
    """A setting or input is wrong; the message tells the user what to change."""


class FatalError(XlmflowError):
    """The run cannot continue."""


class ShardError(XlmflowError):
    """One shard failed; the run goes on without it (its rows are rejected with a reason)."""


class RetryableError(XlmflowError):
    """Transient; safe to retry a bounded number of times."""


class InputsChangedError(XlmflowError):
    """The inputs of an already committed partition changed; it was left as it is (exit status 3)."""

    exit_code = 3
