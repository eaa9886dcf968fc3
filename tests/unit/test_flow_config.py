"""Flow control's configuration: prices and default limits from settings, limits per tenant."""

from __future__ import annotations

import pytest

from shared.config import load_settings
from shared.errors import ConfigurationError, RateLimited
from shared.flow.limits_store import ALL_TYPES, FlowConfig, LimitSpec, parse_limit
from shared.security.keyring import generate_keyring
from shared.tasks.registry import builtin_registry
from tests.support.economy import build_flow
from tests.support.fakestore import FakeFirestore


def test_prices_and_a_default_limit_come_from_the_environment() -> None:
    settings = load_settings(
        {"AIA_TASK_PRICES": "echo=2, analytics.summary=10", "AIA_RATE_LIMIT_DEFAULT": "20/10"}
    )
    assert settings.task_prices == {"echo": 2, "analytics.summary": 10}
    assert parse_limit(settings.rate_limit_default) == LimitSpec(rate=20, burst=10)
    assert parse_limit("") is None
    assert parse_limit("5") == LimitSpec(rate=5, burst=5)
    for bad in ("echo", "echo=-1", "echo=x"):
        with pytest.raises(ConfigurationError, match="AIA_TASK_PRICES"):
            load_settings({"AIA_TASK_PRICES": bad})
    with pytest.raises(ConfigurationError, match="AIA_RATE_LIMIT_DEFAULT"):
        load_settings({"AIA_RATE_LIMIT_DEFAULT": "fast"})


def test_a_tenant_s_own_limit_wins_over_the_default_and_a_type_s_adds_to_it() -> None:
    default = LimitSpec(rate=20, burst=10)
    plain = FlowConfig(tenant_id="a")
    assert [s for s, _ in plain.limits_for("echo", default)] == [ALL_TYPES]
    assert plain.limits_for("echo", None) == []
    own = FlowConfig(
        tenant_id="b",
        limits={ALL_TYPES: LimitSpec(rate=1, burst=1), "sleep": LimitSpec(rate=2, burst=2)},
    )
    assert [(s, lim.rate) for s, lim in own.limits_for("sleep", default)] == [
        (ALL_TYPES, 1),
        ("sleep", 2),
    ]
    assert [s for s, _ in own.limits_for("echo", default)] == [ALL_TYPES]


def test_the_default_limit_applies_to_tenants_without_one_and_prices_override_types() -> None:
    flow = build_flow(
        FakeFirestore(),
        builtin_registry(),
        generate_keyring(),
        rate_clock=lambda: 1_800_000_000.5,
        default_limit=LimitSpec(rate=1, burst=2),
        prices={"echo": 4},
    )
    assert flow.admission.price("echo") == 4
    assert flow.admission.price("sleep") == 1  # its registration's
    for _ in range(2):
        flow.submit.submit("anyone", {"type": "echo", "payload": {}})
    with pytest.raises(RateLimited):
        flow.submit.submit("anyone", {"type": "echo", "payload": {}})
    flow.config.set_limit("roomy", ALL_TYPES, LimitSpec(rate=1, burst=5))
    for _ in range(5):
        flow.submit.submit("roomy", {"type": "echo", "payload": {}})


def test_an_invalid_stored_configuration_refuses_instead_of_opening_the_gates() -> None:
    db = FakeFirestore()
    db.collection("flow_config").document("acme").set({"limits": {"*": {"rate": -1}}})
    flow = build_flow(db, builtin_registry(), generate_keyring())
    with pytest.raises(ConfigurationError, match="acme"):
        flow.submit.submit("acme", {"type": "echo", "payload": {}})
