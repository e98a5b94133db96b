"""Every ``SAMPLEFLEET_*`` environment variable, read and validated in one place by producer and workers.

A bad value fails with one line naming the variable (``SettingsError``), not a traceback deep in a worker.
Read it with ``settings()`` each time it is needed: it is cheap, and tests change the environment.
"""
from __future__ import annotations

import os
from functools import lru_cache

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.errors import ConfigError

PREFIX = "SAMPLEFLEET_"


class SettingsError(ConfigError):
    """A ``SAMPLEFLEET_*`` variable has a value that cannot be used; the message names it."""


class Settings(BaseSettings):
    """The fleet's settings; each field is the variable ``SAMPLEFLEET_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", frozen=True)

    broker_url: str = Field("redis://127.0.0.1:6379/0", description="Celery broker (Redis).")
    state_url: str | None = Field(None, description="Redis of the job state; default: the broker.")
    result_url: str | None = Field(None, description="Celery result backend; default: the broker.")
    lease_renew: float = Field(5.0, gt=0, description="Seconds between a worker's renewals of its shard's lease.")
    lease_expire: float = Field(30.0, gt=0, description="Seconds without a renewal after which a shard's worker "
                                "counts as lost and the shard is queued again.")
    reap_interval: float = Field(5.0, gt=0, description="Seconds between two looks for expired leases.")
    stage_time_limit: float = Field(0.0, ge=0, description="Seconds one stage of one shard may run before it "
                                    "is stopped with an error (0: no limit).")
    visibility_timeout: int = Field(6 * 3600, ge=1, description="Redis redelivers an unacknowledged message "
                                    "after this many seconds: the last resort behind the leases.")
    soft_shutdown: float = Field(5.0, ge=0, description="Seconds a worker stopped with SIGTERM (or Ctrl-C) lets "
                                 "the stage it runs go on in case it finishes; then it hands the shard back (sent "
                                 "again at once) and stops the stage. It exits within this + 8 s "
                                 "(workers/preemption.py): keep the grace period before SIGKILL above that.")
    heartbeat_interval: float = Field(10.0, gt=0, description="Seconds between two writes of a worker's liveness "
                                      "heartbeat file (workers/heartbeat.py).")
    heartbeat_stale: float = Field(120.0, gt=0, description="The liveness probe fails once a worker's main thread "
                                   "has not run Python for this many seconds (frozen, or stuck in a C call).")
    heartbeat_dir: str | None = Field(None, description="Folder of the heartbeat files (local to the worker's "
                                      "host or container); default: <temp dir>/samplefleet-heartbeat.")
    max_attempts: int = Field(3, ge=1, description="Failed attempts after which a shard is marked failed.")
    finished_ttl: int = Field(7 * 24 * 3600, ge=0, description="Seconds a finished (done, partial or cancelled) "
                              "job's keys stay in Redis for `producer status`, `list` and `resume` (resuming "
                              "keeps them again); then they expire (0: kept forever).")
    open_timeout: float = Field(60.0, gt=0, description="Seconds the producer waits for a worker to check a "
                                "new job's output location.")
    preload_model: str | None = Field(None, description="Model a worker loads at start (fails fast if it cannot).")
    preload_engine: str = Field("transformers", description="Engine of SAMPLEFLEET_PRELOAD_MODEL.")
    debug: bool = Field(False, description="Print the traceback of an error instead of one line (the producer's "
                        "--debug).")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads of each process that runs a model, "
                                "and the cap on its math-checker processes; default: the cores the process may use "
                                "(CPU affinity, cgroup quota).")
    cache: str | None = Field(None, description="Folder of samplefleet's own files (the demo model, converted "
                              "once); default: ~/.cache/samplefleet.")
    s3_endpoint: str | None = Field(None, description="S3 endpoint URL (MinIO, Ceph, a test server); default: "
                                    "AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL if set, else AWS's own.")
    s3_max_attempts: int = Field(8, description="Tries of one S3 call, the first included, with exponential "
                                 "back-off on throttling, 5xx and connection errors.")

    @field_validator("s3_max_attempts", mode="before")
    @classmethod
    def _whole(cls, value: object) -> int:
        if not str(value).isdigit() or int(str(value)) < 1:
            raise ValueError("expected a whole number >= 1")
        return int(str(value))

    @model_validator(mode="after")
    def _timings(self) -> "Settings":
        if self.lease_expire < 2 * self.lease_renew:
            raise ValueError(f"SAMPLEFLEET_LEASE_EXPIRE ({self.lease_expire:g}) must be at least twice "
                             f"SAMPLEFLEET_LEASE_RENEW ({self.lease_renew:g}): one late renewal must not lose a "
                             "shard")
        if self.heartbeat_stale < 3 * self.heartbeat_interval:
            raise ValueError(f"SAMPLEFLEET_HEARTBEAT_STALE ({self.heartbeat_stale:g}) must be at least three times "
                             f"SAMPLEFLEET_HEARTBEAT_INTERVAL ({self.heartbeat_interval:g}): one late write must "
                             "not restart a worker")
        return self

    @property
    def broker_given(self) -> str | None:
        """SAMPLEFLEET_BROKER_URL when it is set (the producer's default --broker); without it a job runs in the
        producer's own process, while a worker uses the default broker."""
        return self.broker_url if "broker_url" in self.model_fields_set else None

    @property
    def state(self) -> str:
        return self.state_url or self.broker_url

    @property
    def result(self) -> str:
        return self.result_url or self.broker_url


def settings() -> Settings:
    """The settings from the environment now; SettingsError names the variable of a bad value.

    Parsed once per distinct set of ``SAMPLEFLEET_*`` variables: building a Settings costs about 2 ms, and a
    shard task reads them several times (measured in bench/scale_sim.py: half the scorer's CPU per shard)."""
    return _parsed(tuple(sorted((k, v) for k, v in os.environ.items() if k.upper().startswith(PREFIX))))


@lru_cache(maxsize=16)
def _parsed(env: tuple[tuple[str, str], ...]) -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = PREFIX + str(err["loc"][0]).upper() if err["loc"] else ""
            message = err["msg"].removeprefix("Value error, ")
            problems.append(f"{name}={err.get('input')!r}: {message}" if name else message)
        raise SettingsError("; ".join(problems)) from None
