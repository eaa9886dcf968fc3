"""Typed runtime configuration: the only module that reads the environment."""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from shared.errors import ConfigurationError

DEFAULT_PROJECT = "aia-local"
# Pub/Sub may take this long past its retry backoff to redeliver; the sweep waits longer.
REDELIVERY_MARGIN_S = 5.0
# The longest an instance may trust what it read about a tenant's webhook endpoints:
# a new endpoint's catch-up covers exactly this window (shared.webhooks.outbox).
WEBHOOK_CACHE_MAX_S = 30.0

# Settings are checked by the few rules below rather than by pydantic: every
# function reads them, and importing pydantic costs ~150 ms of a cold start that
# the health check, which uses nothing else of it, must not pay.
_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})


class Secret:
    """A value kept out of reprs and logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _as_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError("must be a boolean (true/false, 1/0, yes/no, on/off)")


def _as_number(value: object, kind: type[float]) -> float:
    what = "an integer" if kind is int else "a number"
    if isinstance(value, str):
        try:
            value = kind(value.strip())
        except ValueError:
            raise ValueError(f"must be {what}, not {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"must be {what}")
    if not math.isfinite(value) or (kind is int and value != int(value)):
        raise ValueError(f"must be {what}, not {value!r}")
    return kind(value)


def _as_text_tuple(value: object) -> tuple[str, ...]:
    # "tasks.billing, tasks.reports"
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError("must be a comma-separated list")


def _as_prices(value: object) -> dict[str, int]:
    # "echo=1,analytics.summary=5"
    pairs: list[tuple[object, object]] = []
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, str):
        for part in filter(str.strip, value.split(",")):
            name, sep, price = part.rpartition("=")
            if not sep or not name.strip():
                raise ValueError(f"{part.strip()!r} is not TYPE=PRICE")
            pairs.append((name.strip(), price.strip()))
    else:
        raise TypeError("must be TYPE=PRICE,...")
    prices: dict[str, int] = {}
    for task_type, given in pairs:
        whole = int(_as_number(given, int))
        if whole < 0:
            raise ValueError(f"price of {task_type!r} must be >= 0")
        prices[str(task_type)] = whole
    return prices


def _as_path(value: object) -> Path:
    if isinstance(value, Path | str):
        return Path(value)
    raise ValueError("must be a path")


def _as_secret(value: object) -> Secret:
    if isinstance(value, Secret):
        return value
    if isinstance(value, str):
        return Secret(value)
    raise ValueError("must be text")


@dataclass(frozen=True)
class Rule:
    """How one setting is read from text, and what values it allows."""

    convert: Callable[[object], object]
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    optional: bool = False  # None (unset) is allowed

    def apply(self, value: object) -> object:
        if value is None and self.optional:
            return None
        value = self.convert(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            if self.ge is not None and value < self.ge:
                raise ValueError(f"must be >= {self.ge:g}, not {value:g}")
            if self.gt is not None and value <= self.gt:
                raise ValueError(f"must be > {self.gt:g}, not {value:g}")
            if self.le is not None and value > self.le:
                raise ValueError(f"must be <= {self.le:g}, not {value:g}")
        return value


def _text(*, min_length: int = 0, pattern: str | None = None) -> dict[str, Rule]:
    def convert(value: object) -> str:
        if not isinstance(value, str):
            raise TypeError("must be text")
        if len(value) < min_length:
            raise ValueError(f"must be at least {min_length} characters")
        if pattern is not None and re.fullmatch(pattern, value) is None:
            raise ValueError(f"must match {pattern}")
        return value

    return {"rule": Rule(convert)}


def _number(
    kind: type[float], *, ge: float | None = None, gt: float | None = None, le: float | None = None
) -> dict[str, Rule]:
    return {"rule": Rule(lambda v: _as_number(v, kind), ge=ge, gt=gt, le=le)}


def _rule(convert: Callable[[object], object], *, optional: bool = False) -> dict[str, Rule]:
    return {"rule": Rule(convert, optional=optional)}


class SettingsInvalid(ValueError):
    """Settings that break their rules; `problems` holds (setting, why) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{name}: {why}" for name, why in problems))
        self.problems = problems


@dataclass(frozen=True)
class Settings:
    """Validated settings; build with `load_settings` or `get_settings`."""

    project: str = field(default=DEFAULT_PROJECT, metadata=_text(min_length=1))
    firestore_database: str = field(default="(default)", metadata=_text(min_length=1))
    # API key records live in their own database: functions serving tenants may only read it.
    keys_database: str = field(default="(default)", metadata=_text(min_length=1))
    tasks_topic: str = field(default="aia-tasks", metadata=_text(min_length=3))
    dead_letter_topic: str = field(default="aia-tasks-dead-letter", metadata=_text(min_length=3))
    version: str = field(default="dev", metadata=_text())
    diagnostic_tasks: bool = field(default=True, metadata=_rule(_as_bool))
    # The team's own task modules or packages; empty means the top-level `tasks`
    # package beside `shared/`, if the checkout (or bundle) has one.
    task_modules: tuple[str, ...] = field(default=(), metadata=_rule(_as_text_tuple))
    # Where the diagnostic `probe` task records what runs at once (tests read it).
    diagnostic_dir: Path | None = field(default=None, metadata=_rule(_as_path, optional=True))
    public_base_url: str = field(default="", metadata=_text())
    metrics_shards: int = field(default=16, metadata=_number(int, ge=1, le=1000))
    # How long an instance buffers its task counters before writing them to the shards.
    metrics_flush_s: float = field(default=10.0, metadata=_number(float, ge=0, le=300))
    # The issue caps /health at 2 s.
    health_timeout_s: float = field(default=1.5, metadata=_number(float, gt=0, le=2))
    log_level: str = field(default="INFO", metadata=_text(pattern="DEBUG|INFO|WARNING|ERROR"))
    keyring: Secret | None = field(default=None, metadata=_rule(_as_secret, optional=True))
    keyring_file: Path | None = field(default=None, metadata=_rule(_as_path, optional=True))
    # How long an instance trusts an API key record it read: also the revocation bound.
    api_key_cache_s: float = field(default=30.0, metadata=_number(float, ge=0, le=300))
    # Bearer token guarding /metrics and the detailed /health; unset leaves them open (local).
    metrics_token: Secret | None = field(default=None, metadata=_rule(_as_secret, optional=True))
    # The worker subscription's maximum retry backoff (Terraform passes the same value to both).
    retry_max_backoff_s: float = field(default=600.0, metadata=_number(float, gt=0, le=600))
    # Longer than Pub/Sub's largest retry backoff, so only lost messages are republished.
    redispatch_after_s: float = field(default=900.0, metadata=_number(float, gt=0))
    task_retention_days: int = field(default=30, metadata=_number(int, ge=1, le=3650))
    # The topic carrying webhook event and delivery ids to `deliver_webhooks`.
    webhook_events_topic: str = field(default="aia-webhook-events", metadata=_text(min_length=3))
    # How long an instance trusts what it read about a tenant's webhook endpoints.
    webhook_cache_s: float = field(
        default=WEBHOOK_CACHE_MAX_S, metadata=_number(float, ge=0, le=WEBHOOK_CACHE_MAX_S)
    )
    # Local development only: let endpoints be http:// and on loopback addresses.
    webhooks_allow_loopback: bool = field(default=False, metadata=_rule(_as_bool))
    # Flow control (shared.flow). Operators' price per task type, over its registration's.
    task_prices: dict[str, int] = field(default_factory=dict, metadata=_rule(_as_prices))
    # Escrow shards of a new budget: each takes ~1 write/s, a task writes one twice.
    budget_shards: int = field(default=200, metadata=_number(int, ge=1, le=500))
    # How long an instance trusts a tenant's flow configuration (limits, budget) it read.
    flow_cache_s: float = field(default=10.0, metadata=_number(float, ge=0, le=300))
    # "RATE/BURST" for tenants without a limit of their own; empty: no default limit.
    rate_limit_default: str = field(default="", metadata=_text(pattern=r"(\d+(\.\d+)?(/\d+)?)?"))
    ledger_retention_days: int = field(default=400, metadata=_number(int, ge=1, le=3650))
    # Tasks of one tenant running at once, for tenants without a max_running of their
    # own; 0: no limit. Below the workers' capacity, it shares them fairly.
    tenant_max_running: int = field(default=0, metadata=_number(int, ge=0, le=100))
    # Tracing (shared.tracing): where spans go, the share of new traces kept, and
    # the console page of a trace ("{trace_id}" is replaced) the dashboard links to.
    trace_exporter: str = field(default="none", metadata=_text(pattern="none|file|console|gcp"))
    trace_dir: Path | None = field(default=None, metadata=_rule(_as_path, optional=True))
    trace_sample_ratio: float = field(default=1.0, metadata=_number(float, ge=0, le=1))
    trace_console_url: str = field(
        default="", metadata=_text(pattern=r"(https?://\S*\{trace_id\}\S*)?")
    )

    def __post_init__(self) -> None:
        problems: list[tuple[str, str]] = []
        for spec in fields(self):
            try:
                value = spec.metadata["rule"].apply(getattr(self, spec.name))
            except (ValueError, TypeError) as exc:
                problems.append((spec.name, str(exc)))
                continue
            # Frozen: the checked, converted value replaces what was given.
            object.__setattr__(self, spec.name, value)
        # A task nacked into backoff is Pub/Sub's to redeliver: republishing it
        # sooner would run a second delivery beside the one still scheduled.
        if not problems and (
            self.redispatch_after_s <= self.retry_max_backoff_s + REDELIVERY_MARGIN_S
        ):
            problems.append(
                (
                    "redispatch_after_s",
                    f"({self.redispatch_after_s:g}) must exceed retry_max_backoff_s "
                    f"({self.retry_max_backoff_s:g}) + {REDELIVERY_MARGIN_S:g} s",
                )
            )
        if not problems and self.trace_exporter == "file" and self.trace_dir is None:
            problems.append(("trace_dir", "must be set when the trace exporter is file"))
        if problems:
            raise SettingsInvalid(problems)

    @staticmethod
    def rule(name: str) -> Rule:
        """The rule a setting is checked by (Terraform's tests compare bounds with it)."""
        rule: Rule = next(f for f in fields(Settings) if f.name == name).metadata["rule"]
        return rule

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
    "AIA_TASK_PRICES": "task_prices",
    "AIA_BUDGET_SHARDS": "budget_shards",
    "AIA_FLOW_CACHE_S": "flow_cache_s",
    "AIA_RATE_LIMIT_DEFAULT": "rate_limit_default",
    "AIA_LEDGER_RETENTION_DAYS": "ledger_retention_days",
    "AIA_TENANT_MAX_RUNNING": "tenant_max_running",
    "AIA_TRACE_EXPORTER": "trace_exporter",
    "AIA_TRACE_DIR": "trace_dir",
    "AIA_TRACE_SAMPLE_RATIO": "trace_sample_ratio",
    "AIA_TRACE_CONSOLE_URL": "trace_console_url",
}


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Validate settings from an environment mapping; errors name the variable."""
    values = {field: environ[var] for var, field in ENVIRONMENT.items() if environ.get(var)}
    try:
        return Settings(**values)  # type: ignore[arg-type]  # text, converted by the rules
    except SettingsInvalid as exc:
        env_of = {field: var for var, field in ENVIRONMENT.items()}
        problems = "; ".join(f"{env_of.get(name, name)}: {why}" for name, why in exc.problems)
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
    return _as_text_tuple(os.environ.get("AIA_TASK_MODULES", ""))
