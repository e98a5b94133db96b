"""The one error tree of samplefleet (producer and stages alike).

Permanent errors come from bad input or configuration: retrying cannot help, so they are never retried.
Transient errors (network, throttling, a stage past its time limit) are retried with back-off; a
``RetryAfter`` says how long to wait first. Any other exception is treated as transient by the failure
policy (``workers.lifecycle.policy``), up to SAMPLEFLEET_MAX_ATTEMPTS attempts.
"""
from __future__ import annotations


class SampleFleetError(Exception):
    """Base of every error samplefleet raises on purpose; its message is meant for the user."""


class PermanentError(SampleFleetError):
    """Bad input or configuration: never retried."""


class ConfigError(PermanentError):
    """An option has a value that cannot work (names the option and the value)."""


class DataError(PermanentError):
    """A dataset or row cannot be used (names the file, the line or row, and the problem)."""


class ModelLoadError(PermanentError):
    """The model (or its tokenizer) cannot be loaded; raised at engine start, before any shard."""


class OutputError(PermanentError):
    """The output location is unusable (file exists, resume of another job, ...)."""


class PromptRefused(PermanentError):
    """The endpoint rejected one prompt: that prompt is skipped with the reason, the others go on."""


class StateError(SampleFleetError):
    """A transition that the job's state refuses (e.g. cancelling a finished job); the message says why."""


class TransientError(SampleFleetError):
    """A failure that may pass (network, throttling): retried with backoff."""


class RetryAfter(TransientError):
    """A transient failure that knows when to try again (a server's Retry-After): the attempt is retried after
    ``seconds``, not after the policy's own back-off."""

    def __init__(self, message: str, seconds: float) -> None:
        super().__init__(message)
        self.seconds = seconds

    def __reduce__(self):  # pickled with its seconds (the prefork pool sends a child's exception to its parent)
        return type(self), (str(self), self.seconds)


class StageTimeLimit(TransientError):
    """A stage ran past SAMPLEFLEET_STAGE_TIME_LIMIT (a hung engine?); counted as a failed attempt."""


class PluginError(SampleFleetError):
    """A user's reward plugin raised while scoring (names the plugin). Not known to be permanent: the fleet
    retries it like any unexpected error, then fails the shard; a local run stops with this one line."""
