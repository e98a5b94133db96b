"""The one error tree of samplefleet (producer and stages alike).

Permanent errors come from bad input or configuration: retrying cannot help, so
they are never retried. Transient errors (network, throttling) may be retried.
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


class TransientError(SampleFleetError):
    """A failure that may pass (network, throttling): retried with backoff."""


class PluginError(SampleFleetError):
    """A user's reward plugin raised while scoring (names the plugin). Not known to be permanent: the fleet
    retries it like any unexpected error, then fails the shard; a local run stops with this one line."""
