"""Consistency of the Terraform with the code it deploys, read from the parsed HCL.

These need no terraform binary: python-hcl2 parses every module, and the tests
compare it with `functions/`, `shared.config.ENVIRONMENT` and `shared.queries`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from shared import queries
from shared.api import routes
from shared.config import ENVIRONMENT, REDELIVERY_MARGIN_S, Settings
from tests.infra.hclfiles import (
    DEPLOY,
    ENV_NAMES,
    ENVIRONMENTS,
    MODULES,
    TERRAFORM,
    Module,
    backend_config,
    load_module,
    module_dirs,
    root_dirs,
    tfvars,
    unquote,
)
from tests.infra.policy import (
    ALLOWED_ROLES,
    KEYRING,
    KEYS_READERS,
    METRICS_TOKEN,
    NOT_PLAIN_ENV,
    PROJECT_LEVEL_ROLES,
    PUBLISHERS,
    UNTRACED,
    USER_FACING,
    WARM_IN_PROD,
)
from tools.package import discover_functions
from tools.tfschema.venvs import REPO_ROOT

pytestmark = pytest.mark.infra

SERVICE = MODULES / "task_service"
FUNCTION = MODULES / "cloud_function"
GATEWAY = MODULES / "https_gateway"


@pytest.fixture(scope="module")
def service() -> Module:
    return load_module(SERVICE)


@pytest.fixture(scope="module")
def functions(service: Module) -> dict[str, dict[str, Any]]:
    specs: dict[str, dict[str, Any]] = service.locals["functions"]
    return specs


# Functions


def test_every_function_folder_is_deployed(functions: dict[str, dict[str, Any]]) -> None:
    folders = set(discover_functions(REPO_ROOT))
    assert folders, "no functions/<name>/main.py"
    missing = folders - set(functions)
    assert not missing, f"functions/ folders without a Terraform function: {sorted(missing)}"


def test_every_deployed_function_has_a_folder(functions: dict[str, dict[str, Any]]) -> None:
    folders = set(discover_functions(REPO_ROOT))
    extra = set(functions) - folders
    assert not extra, f"Terraform deploys functions with no functions/<name>/main.py: {extra}"


def test_function_name_and_entry_point_are_the_folder_name(service: Module) -> None:
    call = service.module_calls["function"]
    assert unquote(call["for_each"]) == "local.functions"
    assert unquote(call["name"]) == "each.key"
    assert call["source_archive"] == "${var.bundle_dir}/${each.key}.zip"
    fn = load_module(FUNCTION).resources["google_cloudfunctions2_function"]["this"]
    assert unquote(fn["name"]) == "var.name"
    build = fn["build_config"][0]
    assert unquote(build["entry_point"]) == "var.name"
    assert build["runtime"] == "${var.runtime}"


def test_bundle_object_is_named_by_content_hash() -> None:
    obj = load_module(FUNCTION).resources["google_storage_bucket_object"]["source"]
    assert "filesha256(var.source_archive)" in obj["name"]


# Environment variables


def test_environment_variables_match_what_shared_reads(service: Module) -> None:
    plain = set(service.locals["environment_variables"])
    expected = set(ENVIRONMENT) - set(NOT_PLAIN_ENV)
    assert not plain - set(ENVIRONMENT), f"set but never read: {sorted(plain - set(ENVIRONMENT))}"
    assert not expected - plain, f"read but never set: {sorted(expected - plain)}"
    assert set(NOT_PLAIN_ENV) <= set(ENVIRONMENT), "stale exception in NOT_PLAIN_ENV"


def test_keyring_is_a_secret_for_the_functions_that_need_it(
    service: Module, functions: dict[str, dict[str, Any]]
) -> None:
    call = service.module_calls["function"]
    assert call["secret_environment_variables"] == "${local.function_secrets[each.key]}"
    secret_env = service.locals["function_secrets"]
    assert (
        "spec.keyring == null ? {} : {AIA_KEYRING = local.keyring_secrets[spec.keyring]}"
        in secret_env
    )
    assert {n: s["keyring"] for n, s in functions.items() if s["keyring"]} == KEYRING
    assert set(service.locals["keyring_secrets"]) == {"public", "private"}
    assert "AIA_KEYRING" not in service.locals["environment_variables"]


def test_metrics_token_is_a_secret_for_health_and_metrics_only(
    service: Module, functions: dict[str, dict[str, Any]]
) -> None:
    secret_env = service.locals["function_secrets"]
    secret = "google_secret_manager_secret.metrics_token.secret_id"
    assert f"spec.metrics_token ? {{AIA_METRICS_TOKEN = {secret}}} : {{}}" in secret_env
    assert {n for n, s in functions.items() if s["metrics_token"] is True} == METRICS_TOKEN
    assert all(s["metrics_token"] in (True, False) for s in functions.values())
    # Secret-level IAM: the same functions, on this secret only.
    access = service.resources["google_secret_manager_secret_iam_member"]["metrics_token_access"]
    assert access["for_each"] == (
        "${{for name, spec in local.functions : name => spec if spec.metrics_token}}"
    )
    assert access["secret_id"] == "${google_secret_manager_secret.metrics_token.secret_id}"
    assert access["role"] == "roles/secretmanager.secretAccessor"
    assert "AIA_METRICS_TOKEN" not in service.locals["environment_variables"]


def test_no_secret_values_in_state() -> None:
    for path in TERRAFORM.rglob("*.tf"):
        text = path.read_text()
        assert "google_secret_manager_secret_version" not in text, path
        assert "secret_data" not in text, path


# References


@pytest.mark.parametrize("path", [*module_dirs(), *root_dirs()], ids=lambda p: p.name)
def test_references_resolve(path: Path) -> None:
    module = load_module(path)
    declared = {(t, n) for t, named in module.resources.items() for n in named}
    text = re.sub(r"(?m)^\s*#.*$", "", module.text())
    problems = []
    for type_, name in sorted(module.references()):
        if type_ == "local" and name not in module.locals:
            problems.append(f"local.{name}")
        elif type_ == "var" and name not in module.variables:
            problems.append(f"var.{name}")
        elif type_ == "module" and name not in module.module_calls:
            problems.append(f"module.{name}")
        elif type_.startswith("google_") and (type_, name) not in declared:
            problems.append(f"{type_}.{name}")
    for type_, name in re.findall(r"\bdata\.(google_[a-z0-9_]+)\.([a-z0-9_]+)", text):
        if name not in module.data.get(type_, {}):
            problems.append(f"data.{type_}.{name}")
    assert not problems, f"undeclared: {problems}"


def test_module_call_arguments_are_module_variables() -> None:
    for path in [*module_dirs(), *root_dirs()]:
        for name, call in load_module(path).module_calls.items():
            target = load_module((path / call["source"]).resolve())
            meta = {"source", "for_each", "count", "depends_on", "providers", "version"}
            meta.add("__comments__")
            args = set(call) - meta
            assert not args - set(target.variables), f"{path.name}: module.{name}: {args}"
            required = {n for n, v in target.variables.items() if "default" not in v}
            assert not required - args, f"{path.name}: module.{name} misses {required - args}"


def test_topics_and_secrets_named_by_functions_exist(
    service: Module, functions: dict[str, dict[str, Any]]
) -> None:
    topics = set(service.locals["topics"])
    for name, spec in functions.items():
        assert set(spec["publishes"]) <= topics, name
        assert set(spec["views"]) <= topics, name
        for key in spec["invokers"]:
            assert f"{key} =" in service.locals["invoker_identities"], (name, key)
    assert set(service.locals["topics"]) == {"tasks", "dead_letter", "webhook_events"}


def test_functions_publish_only_where_they_must(functions: dict[str, dict[str, Any]]) -> None:
    publishers: dict[str, set[str]] = {}
    for name, spec in functions.items():
        for topic in spec["publishes"]:
            publishers.setdefault(topic, set()).add(name)
    assert publishers == PUBLISHERS
    assert {n for n, s in functions.items() if s["user_facing"]} == USER_FACING


def test_only_functions_publish_to_the_dead_letter_topic(service: Module) -> None:
    """Pub/Sub's own forwarding goes to the backstop: a dead letter is the worker's verdict."""
    grants = service.resources["google_pubsub_topic_iam_member"]
    assert set(grants) == {"publish", "view", "pubsub_agent_backstop_publisher"}
    publish = grants["publish"]
    assert publish["for_each"] == "${local.publish_grants}"
    assert publish["topic"] == "${local.topics[each.value.topic].name}"
    assert grants["view"]["role"] == "roles/pubsub.viewer"
    assert grants["pubsub_agent_backstop_publisher"]["topic"] == (
        "${google_pubsub_topic.backstop.name}"
    )


# Pub/Sub


def test_worker_push_subscription(service: Module) -> None:
    sub = service.resources["google_pubsub_subscription"]["worker_push"]
    assert sub["topic"] == "${google_pubsub_topic.tasks.id}"
    assert sub["ack_deadline_seconds"] == 600
    push = sub["push_config"][0]
    assert push["push_endpoint"] == '${module.function["process_task"].uri}'
    oidc = push["oidc_token"][0]
    assert oidc["service_account_email"] == "${google_service_account.push_invoker.email}"
    assert oidc["audience"] == push["push_endpoint"]
    assert sub["retry_policy"] == [
        {"minimum_backoff": "10s", "maximum_backoff": "${var.retry_max_backoff_s}s"}
    ]
    # The same variable reaches the code, whose settings refuse a sweep shorter than it.
    env = service.locals["environment_variables"]
    assert env["AIA_RETRY_MAX_BACKOFF_S"] == "${tostring(var.retry_max_backoff_s)}"
    # Pub/Sub gives up on a message into the backstop, never into the dead letters.
    dlp = sub["dead_letter_policy"][0]
    assert dlp["dead_letter_topic"] == "${google_pubsub_topic.backstop.id}"
    # The worker's own timeout must not exceed the ack deadline.
    functions = service.locals["functions"]
    assert functions["process_task"]["timeout"] <= sub["ack_deadline_seconds"]
    # No Eventarc trigger: its subscription could not carry this policy.
    fn = load_module(FUNCTION).resources["google_cloudfunctions2_function"]["this"]
    assert "event_trigger" not in fn


def test_backstop_redelivers_to_the_worker(service: Module) -> None:
    subs = service.resources["google_pubsub_subscription"]
    worker, backstop = subs["worker_push"], subs["backstop_push"]
    topic = service.resources["google_pubsub_topic"]["backstop"]
    assert topic["name"] == "${var.tasks_topic}-backstop"
    assert backstop["topic"] == "${google_pubsub_topic.backstop.id}"
    # Same endpoint, identity, audience and backoff as the worker subscription.
    assert backstop["push_config"] == worker["push_config"]
    assert backstop["retry_policy"] == worker["retry_policy"]
    assert backstop["ack_deadline_seconds"] == 600
    # Nothing after the backstop: it retries until the worker acks.
    assert "dead_letter_policy" not in backstop
    assert backstop["expiration_policy"] == [{"ttl": ""}]


def test_dead_letters_are_retained_and_pubsub_agent_may_forward(service: Module) -> None:
    hold = service.resources["google_pubsub_subscription"]["dead_letter_hold"]
    assert hold["topic"] == "${google_pubsub_topic.dead_letter.id}"
    assert "push_config" not in hold
    assert "gcp-sa-pubsub" in service.locals["pubsub_agent"]
    # Every grant to the service agent, by what it lets the agent do.
    agent_grants = {
        (type_, body["role"], body.get("topic") or body.get("subscription") or "")
        for module, type_, _, body in _iam_resources()
        if module == "task_service" and body["member"] == "${local.pubsub_agent}"
    }
    assert agent_grants == {
        (
            "google_pubsub_topic_iam_member",
            "roles/pubsub.publisher",
            "${google_pubsub_topic.backstop.name}",
        ),
        (
            "google_pubsub_subscription_iam_member",
            "roles/pubsub.subscriber",
            "${google_pubsub_subscription.worker_push.name}",
        ),
        ("google_service_account_iam_member", "roles/iam.serviceAccountTokenCreator", ""),
    }


def test_retry_backoff_has_one_source(service: Module) -> None:
    """The subscriptions, the code and the sweep's lower bound all read var.retry_max_backoff_s."""
    backoff = service.variables["retry_max_backoff_s"]
    (bounds,) = backoff["validation"]
    match = re.fullmatch(
        r"\$\{var\.retry_max_backoff_s >= (\d+) && var\.retry_max_backoff_s <= (\d+)\}",
        bounds["condition"],
    )
    assert match, bounds["condition"]
    low, high = match.groups()
    # Within what the code accepts (it refuses more than its own maximum).
    code_max = Settings.rule("retry_max_backoff_s").le
    assert code_max is not None
    assert int(low) == 10
    assert int(high) <= code_max
    assert backoff["default"] <= int(high)
    after = service.variables["redispatch_after_s"]
    assert after["default"] is None
    (rule,) = after["validation"]
    # The code's own margin, against the variable, not a copy of its value.
    assert rule["condition"] == (
        "${var.redispatch_after_s == null ? true : "
        f"var.redispatch_after_s > var.retry_max_backoff_s + {REDELIVERY_MARGIN_S:g}}}"
    )
    assert service.locals["redispatch_after_s"] == (
        "${coalesce(var.redispatch_after_s, var.retry_max_backoff_s + 300)}"
    )
    env = service.locals["environment_variables"]
    assert env["AIA_REDISPATCH_AFTER_S"] == "${tostring(local.redispatch_after_s)}"
    # No copy of the number anywhere it could drift from the variable.
    assert "retry_max_backoff_s" not in service.locals
    policies = {
        name: policy["maximum_backoff"]
        for name, sub in service.resources["google_pubsub_subscription"].items()
        for policy in sub.get("retry_policy", [])
    }
    backoff_of_var = "${var.retry_max_backoff_s}s"
    assert policies == {
        "worker_push": backoff_of_var,
        "backstop_push": backoff_of_var,
        "webhook_push": backoff_of_var,
    }


def test_redispatch_is_scheduled_with_oidc(service: Module) -> None:
    job = service.resources["google_cloud_scheduler_job"]["redispatch"]
    target = job["http_target"][0]
    assert target["http_method"] == "POST"
    assert target["uri"] == '${module.function["redispatch"].uri}'
    assert target["oidc_token"][0]["audience"] == target["uri"]


def test_schedule_tick_is_called_every_minute_and_ticks_within_its_timeout(
    service: Module, functions: dict[str, dict[str, Any]]
) -> None:
    from shared.scheduling.ticker import MAX_LOOP_S

    job = service.resources["google_cloud_scheduler_job"]["schedule_tick"]
    assert job["schedule"] == "* * * * *"
    target = job["http_target"][0]
    assert target["uri"] == '${module.function["schedule_tick"].uri}'
    assert target["oidc_token"][0]["audience"] == target["uri"]
    assert target["oidc_token"][0]["service_account_email"] == (
        "${google_service_account.scheduler_invoker.email}"
    )
    assert target["body"] == "${base64encode(jsonencode({for_s = var.tick_loop_s, every_s = 1}))}"
    assert functions["schedule_tick"]["invokers"] == ["scheduler"]
    (bounds,) = service.variables["tick_loop_s"]["validation"]
    high = int(re.findall(r"var\.tick_loop_s <= (\d+)", bounds["condition"])[0])
    # The loop the code accepts, inside the function's timeout and the job's deadline.
    assert high <= MAX_LOOP_S < functions["schedule_tick"]["timeout"]
    assert job["attempt_deadline"] == f"{functions['schedule_tick']['timeout']}s"


def test_webhooks_are_pushed_and_swept_on_the_delivery_functions_paths(service: Module) -> None:
    """The paths functions/deliver_webhooks serves; OIDC audiences are the service URL."""
    uri = '${module.function["deliver_webhooks"].uri}'
    job = service.resources["google_cloud_scheduler_job"]["webhook_sweep"]
    target = job["http_target"][0]
    assert target["http_method"] == "POST"
    assert target["uri"] == '${module.function["deliver_webhooks"].uri}/sweep'
    assert target["oidc_token"][0]["audience"] == uri
    sub = service.resources["google_pubsub_subscription"]["webhook_push"]
    assert sub["topic"] == "${google_pubsub_topic.webhook_events.id}"
    push = sub["push_config"][0]
    assert push["push_endpoint"] == '${module.function["deliver_webhooks"].uri}/push'
    oidc = push["oidc_token"][0]
    assert oidc["service_account_email"] == "${google_service_account.push_invoker.email}"
    assert oidc["audience"] == uri
    functions = service.locals["functions"]
    assert functions["deliver_webhooks"]["timeout"] <= sub["ack_deadline_seconds"]
    assert functions["deliver_webhooks"]["invokers"] == ["pubsub_push", "scheduler"]
    # Pub/Sub gives up on nothing here: the sweep republishes what a lost message named.
    assert "dead_letter_policy" not in sub


# Firestore


def _index_fields(spec: queries.QuerySpec) -> tuple[frozenset[str], tuple[tuple[str, str], ...]]:
    return frozenset(spec.equals), tuple(spec.order)


def test_every_query_has_its_composite_index(service: Module) -> None:
    indexes = service.locals["composite_indexes"]
    defined = set()
    for name, index in indexes.items():
        fields = [tuple(f) for f in index["fields"]]
        order_start = next(
            (i for i, (_, direction) in enumerate(fields) if direction == "DESCENDING"),
            len(fields),
        )
        defined.add((index["collection"], tuple(fields), name, order_start))
    needed = [q for q in queries.ALL_QUERIES if q.needs_composite_index()]
    assert needed, "shared.queries has no query needing a composite index?"
    unmatched = []
    used = set()
    for spec in needed:
        match = [
            name
            for collection, fields, name, _ in defined
            if collection == spec.collection
            and frozenset(f for f, _ in fields[: len(spec.equals)]) == frozenset(spec.equals)
            and all(d == "ASCENDING" for _, d in fields[: len(spec.equals)])
            and tuple(fields[len(spec.equals) :]) == tuple(spec.order)
        ]
        if not match:
            unmatched.append(spec)
        used.update(match)
    assert not unmatched, f"queries without a composite index: {unmatched}"
    unused = set(indexes) - used
    assert not unused, f"indexes no query uses (each costs writes): {sorted(unused)}"


def test_rising_fields_are_exempt_from_single_field_indexes(service: Module) -> None:
    exempt = {(f["collection"], f["field"]) for f in service.locals["not_indexed"].values()}
    assert exempt == set(queries.NOT_INDEXED)
    field = service.resources["google_firestore_field"]["not_indexed"]
    assert field["for_each"] == "${local.not_indexed}"
    assert field["index_config"] == [{}]
    assert "ttl_config" not in field
    for collection, name in queries.NOT_INDEXED:
        specs = [
            q
            for q in queries.ALL_QUERIES
            if q.collection == collection and name in (q.range_field, *(f for f, _ in q.order))
        ]
        # No query reads an exempt field through its single-field index: each names an
        # equality first, so a composite index serves it.
        assert all(q.equals for q in specs), (name, specs)
        if (collection, name) in queries.TIMER_FIELDS:
            assert specs, name
        # One tenant's range is that tenant's to fill; any other query on a rising
        # time (the timers, the sweeps) is read behind a leading shard, or its index
        # would be one range for the whole service.
        unscoped = [q for q in specs if q.equals[0] != "tenant_id"]
        assert all(q.sharded for q in unscoped), (name, unscoped)


def test_index_resource_uses_the_list(service: Module) -> None:
    index = service.resources["google_firestore_index"]["this"]
    assert index["for_each"] == "${local.composite_indexes}"
    assert index["database"] == "${google_firestore_database.this.name}"
    # Every index is on a tasks-database collection: api_keys lives elsewhere.
    collections = {i["collection"] for i in service.locals["composite_indexes"].values()}
    assert queries.API_KEYS not in collections


def test_ttl_policies(service: Module) -> None:
    assert tuple(service.locals["ttl_collections"]) == queries.TTL_COLLECTIONS
    assert service.locals["ttl_field"] == queries.EXPIRES_AT
    field = service.resources["google_firestore_field"]["ttl"]
    assert field["ttl_config"] == [{}]
    assert field["field"] == "${local.ttl_field}"
    used_in_queries = {
        name for q in queries.ALL_QUERIES for name in (*q.equals, *(f for f, _ in q.order))
    }
    # Exempt from indexing only because no query filters or orders on it.
    assert field["index_config"] == [{}]
    assert queries.EXPIRES_AT not in used_in_queries


def test_unindexed_fields_are_never_queried(service: Module) -> None:
    fields = service.locals["unindexed_fields"]
    assert {(f["collection"], f["field"]) for f in fields.values()} == set(queries.UNINDEXED_FIELDS)
    unindexed = service.resources["google_firestore_field"]["unindexed"]
    assert unindexed["for_each"] == "${local.unindexed_fields}"
    assert unindexed["index_config"] == [{}]
    for collection, name in queries.UNINDEXED_FIELDS:
        for query in queries.ALL_QUERIES:
            if query.collection == collection:
                assert name not in (*query.equals, *(f for f, _ in query.order)), query


def test_firestore_database(service: Module) -> None:
    db = service.resources["google_firestore_database"]["this"]
    assert db["type"] == "FIRESTORE_NATIVE"
    assert "var.point_in_time_recovery" in db["point_in_time_recovery_enablement"]
    assert "var.delete_protection" in db["delete_protection_state"]
    assert "google_firestore_backup_schedule" in service.resources


def test_keys_database(service: Module) -> None:
    databases = service.resources["google_firestore_database"]
    assert set(databases) == {"this", "keys"}
    tasks, keys = databases["this"], databases["keys"]
    assert keys["name"] == "${var.name_prefix}-keys"
    # Protected and located exactly as the tasks database, per environment.
    for setting in (
        "location_id",
        "type",
        "point_in_time_recovery_enablement",
        "delete_protection_state",
        "deletion_policy",
    ):
        assert keys[setting] == tasks[setting], setting
    env = service.locals["environment_variables"]
    assert env["AIA_KEYS_DATABASE"] == "${google_firestore_database.keys.name}"
    assert env["AIA_FIRESTORE_DATABASE"] == "${google_firestore_database.this.name}"
    # No TTL and no index on the keys database; a daily backup like the tasks'.
    on_keys = {
        (type_, name)
        for type_, named in service.resources.items()
        for name, body in named.items()
        if body.get("database") == "${google_firestore_database.keys.name}"
    }
    assert on_keys == {("google_firestore_backup_schedule", "keys_daily")}


# IAM


def _iam_resources() -> list[tuple[str, str, str, dict[str, Any]]]:
    found = []
    for path in module_dirs():
        module = load_module(path)
        for type_, named in module.resources.items():
            if type_.endswith(("_iam_member", "_iam_binding", "_iam_policy")):
                for name, body in named.items():
                    found.append((path.name, type_, name, body))
    return found


def test_iam_roles_come_from_the_allow_list(functions: dict[str, dict[str, Any]]) -> None:
    roles: set[str] = {spec["firestore"] for spec in functions.values() if spec["firestore"]}
    roles |= {spec["keys_firestore"] for spec in functions.values() if spec["keys_firestore"]}
    for module, type_, name, body in _iam_resources():
        assert not type_.endswith(("_iam_binding", "_iam_policy")), (
            f"{module}: {type_}.{name}: authoritative IAM would drop others' grants"
        )
        role = body["role"]
        if role in ("${each.value.firestore}", "${each.value.keys_firestore}"):
            continue
        if role == "${each.value}":
            roles.update(re.findall(r'"(roles/[^"]+)"', body["for_each"]))
            continue
        roles.add(role)
    roles = {r.strip('"') for r in roles}
    assert roles <= ALLOWED_ROLES, f"not on the allow-list: {roles - ALLOWED_ROLES}"
    assert not {r for r in roles if r in ("roles/owner", "roles/editor", "roles/viewer")}


def test_project_level_grants_are_limited(service: Module) -> None:
    grants = service.resources["google_project_iam_member"]
    builder = grants["builder"]["for_each"]
    assert set(re.findall(r'"(roles/[^"]+)"', builder)) <= PROJECT_LEVEL_ROLES
    assert "condition" not in grants["builder"]
    project_grants = {
        (module, name)
        for module, type_, name, _ in _iam_resources()
        if type_ == "google_project_iam_member"
    }
    assert project_grants == {
        ("task_service", "firestore"),
        ("task_service", "firestore_keys"),
        ("task_service", "builder"),
        ("task_service", "trace_agent"),
    }
    # Cloud Trace's agent role (write spans, read none), only where spans are exported,
    # and only to the functions that make spans.
    trace = grants["trace_agent"]
    assert trace["role"] == "roles/cloudtrace.agent"
    assert trace["role"] in PROJECT_LEVEL_ROLES
    assert trace["for_each"] == (
        '${var.trace_exporter == "gcp" ? local.traced_functions : toset([])}'
    )
    # ... and they are the functions the code leaves untraced.
    for name in discover_functions(REPO_ROOT):
        source = (REPO_ROOT / "functions" / name / "main.py").read_text(encoding="utf-8")
        assert ("@http.probe_endpoint" in source) == (name in UNTRACED), name
    untraced = ", ".join(f'"{name}"' for name in sorted(UNTRACED))
    assert service.locals["traced_functions"] == (
        f"${{setsubtract(toset(keys(local.functions)), [{untraced}])}}"
    )


# Each Firestore grant resource, the databases its condition may name, and the
# for_each it must have (evaluated below over local.functions).
_DATABASE_CONDITION = re.compile(
    r'resource\.name == "projects/\$\{var\.project_id\}/databases/'
    r'\$\{google_firestore_database\.(\w+)\.name\}"'
)
_FIRESTORE_GRANTS = {
    "firestore": ("this", "firestore", "${local.functions}"),
    "firestore_keys": (
        "keys",
        "keys_firestore",
        "${{for name, spec in local.functions : name => spec if spec.keys_firestore != null}}",
    ),
}


def test_firestore_grants_are_each_on_one_database(
    service: Module, functions: dict[str, dict[str, Any]]
) -> None:
    """Every function's Firestore grant names one database; none may write the keys."""
    grants = service.resources["google_project_iam_member"]
    examined: list[tuple[str, str, str]] = []
    for resource, body in grants.items():
        if resource in ("builder", "trace_agent"):  # no Firestore role (checked above)
            continue
        database, field, for_each = _FIRESTORE_GRANTS[resource]
        assert body["for_each"] == for_each, resource
        assert body["role"] == f"${{each.value.{field}}}", resource
        (condition,) = body["condition"]
        named = _DATABASE_CONDITION.findall(condition["expression"])
        assert named == [database], (resource, condition["expression"])
        assert _DATABASE_CONDITION.fullmatch(condition["expression"]), resource
        # The for_each above, evaluated: one member per function with a role here.
        for function, spec in functions.items():
            if spec[field] is not None:
                examined.append((function, database, spec[field]))
    assert len(examined) == len(functions) + len(KEYS_READERS), examined
    assert {f for f, db, _ in examined if db == "this"} == set(functions)
    on_keys = {(f, role) for f, db, role in examined if db == "keys"}
    assert on_keys == {(f, "roles/datastore.viewer") for f in KEYS_READERS}
    # Nothing else grants a Firestore role (say, at project level without a condition).
    datastore_roles = {
        body["role"]
        for _, type_, name, body in _iam_resources()
        if "datastore" in body["role"] and name not in _FIRESTORE_GRANTS
    }
    assert datastore_roles == set()


def test_all_users_only_where_a_variable_asks(service: Module) -> None:
    hits = []
    for path in TERRAFORM.rglob("*.tf"):
        for line in path.read_text().splitlines():
            code = line.split("#", 1)[0]
            if re.search(r'"all(Authenticated)?Users"', code):
                hits.append((path.relative_to(TERRAFORM).as_posix(), line.strip()))
    assert hits == [("modules/task_service/main.tf", 'public      = "allUsers"')]
    invokers = service.locals["function_invokers"]
    assert 'spec.user_facing && var.public_access ? ["public"] : []' in invokers
    assert all("public" not in spec["invokers"] for spec in service.locals["functions"].values())
    assert service.variables["public_access"]["default"] is False


def test_each_function_runs_as_its_own_service_account(service: Module) -> None:
    accounts = service.resources["google_service_account"]["function"]
    assert accounts["for_each"] == "${local.functions}"
    call = service.module_calls["function"]
    assert call["service_account_email"] == "${google_service_account.function[each.key].email}"


# Storage and APIs


def test_source_bucket_is_private_and_versioned(service: Module) -> None:
    bucket = service.resources["google_storage_bucket"]["sources"]
    assert bucket["uniform_bucket_level_access"] is True
    assert bucket["public_access_prevention"] == "enforced"
    assert bucket["versioning"] == [{"enabled": True}]


def test_required_apis(service: Module) -> None:
    apis = set(service.locals["apis"])
    families = {
        "google_cloudfunctions2_": "cloudfunctions.googleapis.com",
        "google_cloud_run_": "run.googleapis.com",
        "google_pubsub_": "pubsub.googleapis.com",
        "google_firestore_": "firestore.googleapis.com",
        "google_secret_manager_": "secretmanager.googleapis.com",
        "google_cloud_scheduler_": "cloudscheduler.googleapis.com",
        "google_monitoring_": "monitoring.googleapis.com",
        "google_storage_": "storage.googleapis.com",
        "google_compute_": "compute.googleapis.com",
        "google_service_account": "iam.googleapis.com",
    }
    used = {t for p in module_dirs() for t in load_module(p).resources}
    for prefix, api in families.items():
        if any(t.startswith(prefix) for t in used):
            assert api in apis, f"{prefix}* needs {api}"
    assert "cloudbuild.googleapis.com" in apis  # functions build with Cloud Build


# Load balancer


def test_gateway_routes_are_the_route_tables_rules() -> None:
    """The URL map is shared.api.routes.routing_rules(), rule for rule, in the same order."""
    gateway = load_module(GATEWAY)
    routes_tf = gateway.locals["routes"]
    priorities = [r["priority"] for r in routes_tf]
    assert priorities == sorted(set(priorities))
    planned = [
        routes.Rule(
            path=r["full_path"] or r["prefix"],
            prefix=r["prefix"] is not None,
            method=r["method"],
            function=r["backend"],
        )
        for r in routes_tf
    ]
    for r in routes_tf:
        assert (r["full_path"] is None) != (r["prefix"] is None), r
    assert planned == list(routes.routing_rules())
    url_map = gateway.text()
    assert 'header_name = ":method"' in url_map
    assert set(gateway.locals["backends"]) == USER_FACING
    assert {r.function for r in routes.ROUTES} == USER_FACING
    for backend in gateway.resources["google_compute_backend_service"].values():
        assert backend["load_balancing_scheme"] == "EXTERNAL_MANAGED"


def test_every_route_reaches_its_function_through_the_load_balancer() -> None:
    """Each route, at an example path, through the rules as a URL map applies them."""
    rules = load_module(GATEWAY).locals["routes"]

    def backend(method: str, path: str) -> str:
        for r in sorted(rules, key=lambda r: r["priority"]):
            if r["method"] not in (None, method):
                continue
            if path == r["full_path"] or (r["prefix"] and path.startswith(r["prefix"])):
                return str(r["backend"])
        return "health"  # the URL map's default service

    for route in routes.ROUTES:
        path = route.example_path()
        assert backend(route.method, path) == route.function, (route.method, path)


# Conventions


@pytest.mark.parametrize("path", module_dirs(), ids=lambda p: p.name)
def test_module_layout(path: Path) -> None:
    for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "README.md"):
        assert (path / name).is_file(), f"{path.name}/{name} missing"


@pytest.mark.parametrize("path", [*module_dirs(), *root_dirs()], ids=lambda p: str(p.name))
def test_variables_typed_and_described(path: Path) -> None:
    module = load_module(path)
    for name, spec in module.variables.items():
        assert spec.get("type"), f"{path.name}: var.{name} has no type"
        assert spec.get("description"), f"{path.name}: var.{name} has no description"
    for name, spec in module.outputs.items():
        assert spec.get("description"), f"{path.name}: output {name} has no description"


@pytest.mark.parametrize("path", module_dirs(), ids=lambda p: p.name)
def test_identity_inputs_have_no_default(path: Path) -> None:
    for name in ("project_id", "region", "environment", "name"):
        spec = load_module(path).variables.get(name)
        if spec is not None:
            assert "default" not in spec, f"{path.name}: var.{name} must be given"


ENUM_VARIABLES = {
    "task_service": {"environment", "log_level", "name_prefix", "max_delivery_attempts"},
    "cloud_function": {"runtime", "ingress", "memory"},
    "https_gateway": {"name"},
}


@pytest.mark.parametrize("module", sorted(ENUM_VARIABLES))
def test_enums_are_validated(module: str) -> None:
    variables = load_module(MODULES / module).variables
    for name in ENUM_VARIABLES[module]:
        assert "validation" in variables[name], f"{module}: var.{name} needs validation"


def test_environments_hold_only_what_differs() -> None:
    """An environment is a tfvars file and a backend prefix; the root exists once."""
    assert sorted(p.name for p in ENVIRONMENTS.iterdir()) == sorted(ENV_NAMES)
    for env in ENV_NAMES:
        files = sorted(p.name for p in (ENVIRONMENTS / env).iterdir())
        assert files == ["backend.hcl", "terraform.tfvars"], env
        assert backend_config(env) == {"prefix": f"aia/{env}"}, env
        assert tfvars(env)["environment"] == env
    assert not list(ENVIRONMENTS.rglob("*.tf")), "environment folders hold no Terraform code"
    deploy = load_module(DEPLOY)
    assert list(deploy.module_calls) == ["aia"], "the root is one module call"
    assert deploy.module_calls["aia"]["source"] == "../modules/task_service"
    (backend,) = [
        b
        for f in deploy.files.values()
        for t in f.get("terraform", [])
        for b in t.get("backend", [])
    ]
    assert backend == {"gcs": {}}, "the prefix and bucket come from -backend-config"


def test_tfvars_set_only_declared_variables() -> None:
    declared = load_module(DEPLOY).variables
    required = {n for n, v in declared.items() if "default" not in v}
    for env in ENV_NAMES:
        values = set(tfvars(env))
        assert values <= set(declared), f"{env}: {values - set(declared)}"
        # app_version and bundle_dir have defaults; everything required is in the file.
        assert required <= values, f"{env} misses {required - values}"


def test_deploy_root_passes_on_every_variable() -> None:
    deploy = load_module(DEPLOY)
    used = {name for type_, name in deploy.references() if type_ == "var"}
    assert set(deploy.variables) == used, set(deploy.variables) ^ used


def test_state_is_tied_to_its_environment() -> None:
    guard = load_module(DEPLOY).resources["terraform_data"]["environment"]
    identity = "${var.environment}/${var.project_id}"
    assert guard["input"] == identity
    (lifecycle,) = guard["lifecycle"]
    # Ignoring input keeps what the state was created for; the postcondition compares.
    assert lifecycle["ignore_changes"] == ["input"]
    (check,) = lifecycle["postcondition"]
    assert check["condition"] == f'${{self.output == "{identity}"}}'


def test_prod_values_in_tfvars() -> None:
    """The fast, terraform-free half of the per-environment checks (plans do the rest)."""
    prod = tfvars("prod")
    assert prod["delete_protection"] is True
    assert prod["point_in_time_recovery"] is True
    for name in WARM_IN_PROD:
        assert prod["scaling"][name]["min_instances"] >= 1, name
    for env in ENV_NAMES:
        assert tfvars(env)["point_in_time_recovery"] is True, env
