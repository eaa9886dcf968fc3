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
from shared.config import ENVIRONMENT
from tests.infra.hclfiles import (
    ENV_NAMES,
    ENVIRONMENTS,
    MODULES,
    TERRAFORM,
    Module,
    env_dirs,
    load_module,
    module_dirs,
    tfvars,
    unquote,
)
from tests.infra.policy import (
    ALLOWED_ROLES,
    KEYRING,
    NOT_PLAIN_ENV,
    PROJECT_LEVEL_ROLES,
    USER_FACING,
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
    secret_env = service.module_calls["function"]["secret_environment_variables"]
    assert "AIA_KEYRING = local.keyring_secrets[each.value.keyring]" in secret_env
    assert {n: s["keyring"] for n, s in functions.items() if s["keyring"]} == KEYRING
    assert set(service.locals["keyring_secrets"]) == {"public", "private"}
    assert "AIA_KEYRING" not in service.locals["environment_variables"]


def test_no_secret_values_in_state() -> None:
    for path in TERRAFORM.rglob("*.tf"):
        text = path.read_text()
        assert "google_secret_manager_secret_version" not in text, path
        assert "secret_data" not in text, path


# References


@pytest.mark.parametrize("path", [*module_dirs(), *env_dirs()], ids=lambda p: p.name)
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
    for path in [*module_dirs(), *env_dirs()]:
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
    assert set(service.locals["topics"]) == {"tasks", "dead_letter"}


def test_functions_publish_only_where_they_must(functions: dict[str, dict[str, Any]]) -> None:
    publishes = {n: s["publishes"] for n, s in functions.items() if s["publishes"]}
    assert publishes == {
        "submit_task": ["tasks"],
        "process_task": ["dead_letter"],
        "redispatch": ["tasks"],
    }
    assert {n for n, s in functions.items() if s["user_facing"]} == USER_FACING


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
        {"minimum_backoff": "10s", "maximum_backoff": "${local.retry_max_backoff_s}s"}
    ]
    # The same local reaches the code, whose settings refuse a sweep shorter than it.
    env = service.locals["environment_variables"]
    assert env["AIA_RETRY_MAX_BACKOFF_S"] == "${tostring(local.retry_max_backoff_s)}"
    dlp = sub["dead_letter_policy"][0]
    assert dlp["dead_letter_topic"] == "${google_pubsub_topic.dead_letter.id}"
    # The worker's own timeout must not exceed the ack deadline.
    functions = service.locals["functions"]
    assert functions["process_task"]["timeout"] <= sub["ack_deadline_seconds"]
    # No Eventarc trigger: its subscription could not carry this policy.
    fn = load_module(FUNCTION).resources["google_cloudfunctions2_function"]["this"]
    assert "event_trigger" not in fn


def test_dead_letters_are_retained_and_pubsub_agent_may_forward(service: Module) -> None:
    hold = service.resources["google_pubsub_subscription"]["dead_letter_hold"]
    assert hold["topic"] == "${google_pubsub_topic.dead_letter.id}"
    assert "push_config" not in hold
    members = service.resources["google_pubsub_topic_iam_member"]
    agent = members["pubsub_agent_dead_letter_publisher"]
    assert agent["member"] == "${local.pubsub_agent}"
    assert agent["role"] == "roles/pubsub.publisher"
    assert agent["topic"] == "${google_pubsub_topic.dead_letter.name}"
    sub = service.resources["google_pubsub_subscription_iam_member"]
    sub_agent = sub["pubsub_agent_worker_subscriber"]
    assert sub_agent["role"] == "roles/pubsub.subscriber"
    assert sub_agent["subscription"] == "${google_pubsub_subscription.worker_push.name}"
    assert "gcp-sa-pubsub" in service.locals["pubsub_agent"]


def test_redispatch_is_scheduled_with_oidc(service: Module) -> None:
    job = service.resources["google_cloud_scheduler_job"]["redispatch"]
    target = job["http_target"][0]
    assert target["http_method"] == "POST"
    assert target["uri"] == '${module.function["redispatch"].uri}'
    assert target["oidc_token"][0]["audience"] == target["uri"]


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


def test_index_resource_uses_the_list(service: Module) -> None:
    index = service.resources["google_firestore_index"]["this"]
    assert index["for_each"] == "${local.composite_indexes}"
    assert index["database"] == "${google_firestore_database.this.name}"


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


def test_firestore_database(service: Module) -> None:
    db = service.resources["google_firestore_database"]["this"]
    assert db["type"] == "FIRESTORE_NATIVE"
    assert "var.point_in_time_recovery" in db["point_in_time_recovery_enablement"]
    assert "var.delete_protection" in db["delete_protection_state"]
    assert "google_firestore_backup_schedule" in service.resources


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
    roles: set[str] = {spec["firestore"] for spec in functions.values()}
    for module, type_, name, body in _iam_resources():
        assert not type_.endswith(("_iam_binding", "_iam_policy")), (
            f"{module}: {type_}.{name}: authoritative IAM would drop others' grants"
        )
        role = body["role"]
        if role == "${each.value.firestore}":
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
    firestore = grants["firestore"]
    assert firestore["condition"][0]["expression"].startswith("resource.name == ")
    assert "databases/${var.firestore_database}" in firestore["condition"][0]["expression"]
    builder = grants["builder"]["for_each"]
    assert set(re.findall(r'"(roles/[^"]+)"', builder)) <= PROJECT_LEVEL_ROLES
    for module, type_, name, _ in _iam_resources():
        if type_ == "google_project_iam_member":
            assert (module, name) in {("task_service", "firestore"), ("task_service", "builder")}


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


def test_gateway_routes_match_the_local_stack() -> None:
    gateway = load_module(GATEWAY)
    routes = gateway.locals["routes"]
    by_path = {(r["full_path"] or r["prefix"], r["method"]): r["backend"] for r in routes}
    assert by_path == {
        ("/health", None): "health",
        ("/metrics", None): "metrics",
        ("/tasks/submit", None): "submit_task",
        ("/tasks", "POST"): "submit_task",
        ("/tasks", None): "task_status",
        ("/tasks/", None): "task_status",
    }
    priorities = [r["priority"] for r in routes]
    assert priorities == sorted(set(priorities))
    # POST /tasks must win over the catch-all /tasks rule.
    post = next(r for r in routes if r["method"] == "POST")
    get = next(r for r in routes if r["full_path"] == "/tasks" and r["method"] is None)
    assert post["priority"] < get["priority"]
    url_map = gateway.text()
    assert 'header_name = ":method"' in url_map
    assert set(gateway.locals["backends"]) == USER_FACING
    for backend in gateway.resources["google_compute_backend_service"].values():
        assert backend["load_balancing_scheme"] == "EXTERNAL_MANAGED"


# Conventions


@pytest.mark.parametrize("path", module_dirs(), ids=lambda p: p.name)
def test_module_layout(path: Path) -> None:
    for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "README.md"):
        assert (path / name).is_file(), f"{path.name}/{name} missing"


@pytest.mark.parametrize("path", [*module_dirs(), *env_dirs()], ids=lambda p: str(p.name))
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


def test_environments_differ_by_variables_only() -> None:
    dev = ENVIRONMENTS / "dev"
    for env in ENV_NAMES:
        root = ENVIRONMENTS / env
        files = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
        expected = ["backend.tf", "main.tf", "outputs.tf", "terraform.tfvars"]
        assert files == sorted([*expected, "variables.tf", "versions.tf"]), env
        for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf"):
            assert (root / name).read_text() == (dev / name).read_text(), f"{env}/{name}"
        backend = (root / "backend.tf").read_text()
        assert backend == (dev / "backend.tf").read_text().replace("aia/dev", f"aia/{env}")
        assert tfvars(env)["environment"] == env
        assert len(load_module(root).module_calls) == 1, "each root is one module call"


def test_tfvars_set_only_declared_variables() -> None:
    declared = set(load_module(ENVIRONMENTS / "dev").variables)
    for env in ENV_NAMES:
        values = {k for k in tfvars(env) if not k.startswith("__")}
        assert values <= declared, f"{env}: {values - declared}"


def test_prod_values_in_tfvars() -> None:
    """The fast, terraform-free half of the per-environment checks (plans do the rest)."""
    prod = tfvars("prod")
    assert prod["delete_protection"] is True
    assert prod["point_in_time_recovery"] is True
    for name in USER_FACING:
        assert prod["scaling"][name]["min_instances"] >= 1, name
    for env in ENV_NAMES:
        assert tfvars(env)["point_in_time_recovery"] is True, env
