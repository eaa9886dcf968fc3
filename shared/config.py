"""Typed runtime configuration: the only module that reads the environment."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from shared.errors import ConfigurationError

DEFAULT_PROJECT = "aia-local"
# Pub/Sub may take this long past its retry backoff to redeliver; the sweep waits longer.
REDELIVERY_MARGIN_S = 5.0
# The longest an instance may trust what it read about a tenant's webhook endpoints:
# a new endpoint's catch-up covers exactly this window (shared.webhooks.outbox).
WEBHOOK_CACHE_MAX_S = 30.0


class Settings(BaseModel):
    """Validated settings; build with `load_settings` or `get_settings`."""

    model_config = ConfigDict(frozen=True)

    project: str = Field(default=DEFAULT_PROJECT, min_length=1)
    firestore_database: str = Field(default="(default)", min_length=1)
    # API key records live in their own database: functions serving tenants may only read it.
    keys_database: str = Field(default="(default)", min_length=1)
    tasks_topic: str = Field(default="aia-tasks", min_length=3)
    dead_letter_topic: str = Field(default="aia-tasks-dead-letter", min_length=3)
    version: str = "dev"
    diagnostic_tasks: bool = True
    # The team's own task modules or packages; empty means the top-level `tasks`
    # package beside `shared/`, if the checkout (or bundle) has one.
    task_modules: tuple[str, ...] = ()
    # Where the diagnostic `probe` task records what runs at once (tests read it).
    diagnostic_dir: Path | None = None
    public_base_url: str = ""
    metrics_shards: int = Field(default=16, ge=1, le=1000)
    # How long an instance buffers its task counters before writing them to the shards.
    metrics_flush_s: float = Field(default=10.0, ge=0, le=300)
    health_timeout_s: float = Field(default=1.5, gt=0, le=2)  # the issue caps /health at 2 s
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    keyring: SecretStr | None = None
    keyring_file: Path | None = None
    # How long an instance trusts an API key record it read: also the revocation bound.
    api_key_cache_s: float = Field(default=30.0, ge=0, le=300)
    # Bearer token guarding /metrics and the detailed /health; unset leaves them open (local).
    metrics_token: SecretStr | None = None
    # The worker subscription's maximum retry backoff (Terraform passes the same value to both).
    retry_max_backoff_s: float = Field(default=600.0, gt=0, le=600)
    # Longer than Pub/Sub's largest retry backoff, so only lost messages are republished.
    redispatch_after_s: float = Field(default=900.0, gt=0)
    task_retention_days: int = Field(default=30, ge=1, le=3650)
    # The topic carrying webhook event and delivery ids to `deliver_webhooks`.
    webhook_events_topic: str = Field(default="aia-webhook-events", min_length=3)
    # How long an instance trusts what it read about a tenant's webhook endpoints.
    webhook_cache_s: float = Field(default=WEBHOOK_CACHE_MAX_S, ge=0, le=WEBHOOK_CACHE_MAX_S)
    # Local development only: let endpoints be http:// and on loopback addresses.
    webhooks_allow_loopback: bool = False

    @field_validator("task_modules", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _sweep_waits_out_backoff(self) -> Settings:
        # A task nacked into backoff is Pub/Sub's to redeliver: republishing it
        # sooner would run a second delivery beside the one still scheduled.
        if self.redispatch_after_s <= self.retry_max_backoff_s + REDELIVERY_MARGIN_S:
            raise ValueError(
                f"redispatch_after_s ({self.redispatch_after_s:g}) must exceed "
                f"retry_max_backoff_s ({self.retry_max_backoff_s:g}) + {REDELIVERY_MARGIN_S:g} s"
            )
        return self

    def keyring_text(self) -> str:
        """Raw key ring JSON from the secret variable or the secret file."""
        if self.keyring is not None:
            return self.keyring.get_secret_value()
        if self.keyring_file is not None:
            try:
                return self.keyring_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigurationError(f"cannot read AIA_KEYRING_FILE: {exc.strerror}") from exc
        raise ConfigurationError("no key ring configured: set AIA_KEYRING or AIA_KEYRING_FILE")


# Every variable the product reads, mapped to its setting. The Terraform
# consistency test compares this table with what each function is given.
ENVIRONMENT: dict[str, str] = {
    "GOOGLE_CLOUD_PROJECT": "project",
    "AIA_FIRESTORE_DATABASE": "firestore_database",
    "AIA_KEYS_DATABASE": "keys_database",
    "AIA_TASKS_TOPIC": "tasks_topic",
    "AIA_DEAD_LETTER_TOPIC": "dead_letter_topic",
    "AIA_VERSION": "version",
    "AIA_DIAGNOSTIC_TASKS": "diagnostic_tasks",
    "AIA_TASK_MODULES": "task_modules",
    "AIA_DIAGNOSTIC_DIR": "diagnostic_dir",
    "AIA_PUBLIC_BASE_URL": "public_base_url",
    "AIA_METRICS_SHARDS": "metrics_shards",
    "AIA_METRICS_FLUSH_S": "metrics_flush_s",
    "AIA_HEALTH_TIMEOUT_S": "health_timeout_s",
    "AIA_LOG_LEVEL": "log_level",
    "AIA_KEYRING": "keyring",
    "AIA_KEYRING_FILE": "keyring_file",
    "AIA_API_KEY_CACHE_S": "api_key_cache_s",
    "AIA_METRICS_TOKEN": "metrics_token",
    "AIA_RETRY_MAX_BACKOFF_S": "retry_max_backoff_s",
    "AIA_REDISPATCH_AFTER_S": "redispatch_after_s",
    "AIA_TASK_RETENTION_DAYS": "task_retention_days",
    "AIA_WEBHOOK_EVENTS_TOPIC": "webhook_events_topic",
    "AIA_WEBHOOK_CACHE_S": "webhook_cache_s",
    "AIA_WEBHOOKS_ALLOW_LOOPBACK": "webhooks_allow_loopback",
}


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Validate settings from an environment mapping; errors name the variable."""
    values = {field: environ[var] for var, field in ENVIRONMENT.items() if environ.get(var)}
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        env_of = {field: var for var, field in ENVIRONMENT.items()}
        problems = "; ".join(
            f"{env_of.get(str(err['loc'][0]), err['loc'][0]) if err['loc'] else 'settings'}: "
            f"{err['msg']}"
            for err in exc.errors()
        )
        raise ConfigurationError(f"invalid configuration: {problems}") from exc


@functools.cache
def get_settings() -> Settings:
    """Settings of this instance, read once on first use."""
    return load_settings(os.environ)


def task_modules() -> tuple[str, ...]:
    """Only `AIA_TASK_MODULES`, for loading task types at start-up before other settings.

    A broken task module must stop a function from starting; the rest of the
    settings keep being validated on first use, where a mistake is a problem
    answer naming the variable.
    """
    value = Settings._comma_separated(os.environ.get("AIA_TASK_MODULES", ""))
    return tuple(value) if isinstance(value, tuple) else ()
