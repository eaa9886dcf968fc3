"""Terraform itself: fmt, validate, plans of every environment and `terraform test`.

The google provider cannot be downloaded here. `tools.tfschema` serves its real
schema (8.x, from the cdktn-provider-google wheel, committed as
google.schema.json) through a provider written in Python, so validate, plan and
test check every argument, block, type and reference as the real provider
would, with no network. Plans of the deploy root with each environment's
tfvars give the evaluated configuration the per-environment assertions run on.

Terraform is a requirement (README), so without it these tests fail rather
than skip: a green run always means the Terraform was checked.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.api.routes import routing_rules
from shared.config import ENVIRONMENT
from tests.infra.hclfiles import ENV_NAMES, TERRAFORM, tfvars
from tests.infra.policy import (
    ALLOWED_ROLES,
    KEYRING,
    KEYS_READERS,
    METRICS_TOKEN,
    NOT_PLAIN_ENV,
    PUBLISHERS,
    UNTRACED,
    USER_FACING,
    WARM_IN_PROD,
)
from tools import package
from tools.tfschema import generate
from tools.tfschema.offline import OfflineTerraform, offline_terraform
from tools.tfschema.venvs import REPO_ROOT

pytestmark = pytest.mark.infra

NO_TERRAFORM = "terraform is not on PATH: the README lists Terraform >= 1.11 as required"

# Folders with `terraform test` files, and the variables their runs need.
TEST_VARS: dict[str, Callable[[Path], list[str]]] = {
    "modules/task_service": lambda bundles: ["-var", f"bundle_dir={bundles}"],
    "modules/cloud_function": lambda bundles: ["-var", f"source_archive={bundles}/health.zip"],
    "modules/https_gateway": lambda bundles: [],
    "deploy": lambda bundles: [
        "-var-file=../environments/dev/terraform.tfvars",
        *("-var", f"bundle_dir={bundles}"),
    ],
}

# What is planned: each environment with its own tfvars, and dev made private,
# so the IAM checks see public_access both ways. name -> (tfvars, overrides).
PRIVATE_INVOKERS = ["user:ops@example.com", "group:oncall@example.com"]
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    **{env: (env, {}) for env in ENV_NAMES},
    "dev-private": ("dev", {"public_access": False, "invoker_members": PRIVATE_INVOKERS}),
}


def case_values(case: str) -> dict[str, Any]:
    """The variables a case is planned with: its tfvars, then its overrides."""
    env, overrides = CASES[case]
    return {**tfvars(env), **overrides}


@pytest.fixture(scope="session")
def tf(tmp_path_factory: pytest.TempPathFactory) -> OfflineTerraform:
    runner = offline_terraform(tmp_path_factory.mktemp("tfprovider"))
    if runner is None:
        pytest.fail(NO_TERRAFORM)
    return runner


@pytest.fixture(scope="session")
def tf_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of terraform/ without state, lock files or backends (plans stay local)."""
    root = tmp_path_factory.mktemp("tf") / "terraform"
    shutil.copytree(
        TERRAFORM,
        root,
        ignore=shutil.ignore_patterns(".terraform", ".terraform.lock.hcl", "*.tfstate*"),
    )
    (root / "deploy" / "backend.tf").unlink()
    return root


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundles")
    package.build_all(REPO_ROOT, out)
    return out


@pytest.fixture(scope="session")
def plans(tf: OfflineTerraform, tf_tree: Path, bundle_dir: Path) -> dict[str, dict[str, Any]]:
    """The deploy root planned for each case, as JSON."""
    root = tf_tree / "deploy"
    tf.run("get", cwd=root)
    out = {}
    for case, (env, overrides) in CASES.items():
        assert (root / f"../environments/{env}/terraform.tfvars").is_file()
        tf.run(
            "plan",
            f"-out={case}.plan",
            f"-var-file=../environments/{env}/terraform.tfvars",
            f"-var=bundle_dir={bundle_dir}",
            *(f"-var={name}={json.dumps(value)}" for name, value in overrides.items()),
            "-lock=false",
            cwd=root,
        )
        out[case] = json.loads(tf.run("show", "-json", f"{case}.plan", cwd=root).stdout)
    return out


def walk(module: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from module.get("resources", [])
    for child in module.get("child_modules", []):
        yield from walk(child)


def resources(plan: dict[str, Any], type_: str) -> list[dict[str, Any]]:
    return [r for r in walk(plan["planned_values"]["root_module"]) if r["type"] == type_]


def functions(plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        r["values"]["name"]: r["values"] for r in resources(plan, "google_cloudfunctions2_function")
    }


# Without a provider


def test_fmt() -> None:
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.fail(NO_TERRAFORM)
    result = subprocess.run(
        [terraform, "fmt", "-check", "-recursive", "-diff", str(TERRAFORM)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"run terraform fmt -recursive terraform\n{result.stdout}"


def test_schema_covers_every_type_used() -> None:
    schema = json.loads(generate.SCHEMA_FILE.read_text())
    resources_used, data_used = generate.used_types()
    missing = set(resources_used) - set(schema["resource_schemas"])
    missing |= {f"data.{d}" for d in set(data_used) - set(schema["data_source_schemas"])}
    assert not missing, f"{missing}: run python -m tools.tfschema.generate"


def test_schema_is_what_the_generator_makes() -> None:
    """Guards hand edits of google.schema.json and changes to the generator.

    The pinned wheel is fetched with pip on first use (once, into .venv-wheels/).
    """
    wheel = generate.fetch_wheel()
    resources_used, data_used = generate.used_types()
    fresh = generate.render(generate.generate(resources_used, data_used, wheel))
    assert fresh == generate.SCHEMA_FILE.read_text(), "run python -m tools.tfschema.generate"


def _admits(constraint: str, version: str) -> bool:
    def key(v: str) -> tuple[int, ...]:
        return tuple(int(p) for p in v.split("."))

    ops = {
        ">=": lambda a, b: a >= b,
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
        ">": lambda a, b: a > b,
        "=": lambda a, b: a == b,
    }
    for part in constraint.split(","):
        match = re.fullmatch(r"\s*(>=|<=|>|<|=)?\s*([0-9.]+)\s*", part)
        assert match, f"unsupported constraint {part!r}"
        op, bound = match.group(1) or "=", match.group(2)
        width = max(len(key(version)), len(key(bound)))
        a = key(version) + (0,) * (width - len(key(version)))
        b = key(bound) + (0,) * (width - len(key(bound)))
        if not ops[op](a, b):
            return False
    return True


def test_provider_constraints_admit_the_checked_schema() -> None:
    version = json.loads(generate.SCHEMA_FILE.read_text())["provider_version"]
    for path in TERRAFORM.rglob("versions.tf"):
        constraint = re.search(r'version\s*=\s*"([^"]+)"', path.read_text())
        assert constraint, path
        assert _admits(constraint.group(1), version), (path, constraint.group(1), version)


# Validate and test against the real schema


ROOTS = [
    "deploy",
    "examples/minimal",
    "modules/task_service",
    "modules/cloud_function",
    "modules/https_gateway",
]


@pytest.mark.parametrize("root", ROOTS)
def test_validate(root: str, tf: OfflineTerraform, tf_tree: Path) -> None:
    tf.run("get", cwd=tf_tree / root)
    result = tf.run("validate", "-json", cwd=tf_tree / root, check=False)
    report = json.loads(result.stdout)
    errors = [d for d in report["diagnostics"] if d["severity"] == "error"]
    assert report["valid"], json.dumps(errors, indent=2)


def test_every_module_has_terraform_tests() -> None:
    modules = {f"modules/{p.name}" for p in (TERRAFORM / "modules").iterdir() if p.is_dir()}
    assert modules <= set(TEST_VARS)


@pytest.mark.parametrize("folder", sorted(TEST_VARS))
def test_terraform_test(folder: str, tf: OfflineTerraform, tf_tree: Path, bundle_dir: Path) -> None:
    root = tf_tree / folder
    assert list((root / "tests").glob("*.tftest.hcl")), f"{folder} has no terraform tests"
    tf.run("get", cwd=root)
    result = tf.run("test", "-no-color", *TEST_VARS[folder](bundle_dir), cwd=root)
    assert re.search(r"Success! [1-9]\d* passed, 0 failed", result.stdout), result.stdout


def test_offline_provider_catches_schema_errors(tf: OfflineTerraform, tmp_path: Path) -> None:
    """The validation is real: a misspelled argument and a wrong block fail."""
    (tmp_path / "main.tf").write_text(
        'resource "google_pubsub_subscription" "s" {\n'
        '  name  = "s"\n'
        '  topic = "t"\n'
        "  ack_deadline = 600\n"
        "  retry_policy {\n"
        '    minimum_backof = "10s"\n'
        "  }\n"
        "}\n"
    )
    result = tf.run("validate", "-no-color", cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert 'An argument named "ack_deadline" is not expected here' in result.stderr
    assert 'An argument named "minimum_backof" is not expected here' in result.stderr


# Per-environment values, on the evaluated (planned) configuration


def index_of(resource: dict[str, Any], pattern: str) -> str:
    """The for_each key named by `pattern` (a regex with one group) in the address."""
    match = re.search(pattern, resource["address"])
    assert match, (pattern, resource["address"])
    return match.group(1)


@pytest.mark.parametrize("env", ENV_NAMES)
def test_every_function_is_planned_from_its_folder(env: str, plans: dict[str, Any]) -> None:
    planned = functions(plans[env])
    assert set(planned) == set(package.discover_functions(REPO_ROOT))
    for name, fn in planned.items():
        build = fn["build_config"][0]
        assert build["entry_point"] == name
        assert build["runtime"] == "python311"
        assert build["source"][0]["storage_source"][0]["object"].startswith(f"functions/{name}/")


@pytest.mark.parametrize("env", ENV_NAMES)
def test_environment_variables_per_function(env: str, plans: dict[str, Any]) -> None:
    expected = set(ENVIRONMENT) - set(NOT_PLAIN_ENV)
    secrets = {
        r["values"]["secret_id"]: r["name"]
        for r in resources(plans[env], "google_secret_manager_secret")
    }
    rings = {
        r["values"]["secret_id"]: r["index"]
        for r in resources(plans[env], "google_secret_manager_secret")
        if r["name"] == "keyring"
    }
    planned = functions(plans[env])
    for name, fn in planned.items():
        service = fn["service_config"][0]
        env_vars = service["environment_variables"]
        assert set(env_vars) == expected, name
        assert env_vars["AIA_VERSION"] == "dev"
        assert env_vars["AIA_KEYS_DATABASE"] != env_vars["AIA_FIRESTORE_DATABASE"], name
        secret_env = {s["key"]: s["secret"] for s in service["secret_environment_variables"]}
        if name in KEYRING:
            assert rings[secret_env.pop("AIA_KEYRING")] == KEYRING[name], name
        if name in METRICS_TOKEN:
            assert secrets[secret_env.pop("AIA_METRICS_TOKEN")] == "metrics_token", name
        assert secret_env == {}, name
    # Secret-level IAM matches: exactly these functions may read each secret.
    access = {
        (r["name"], index_of(r, r'\["(\w+)"\]$'))
        for r in resources(plans[env], "google_secret_manager_secret_iam_member")
    }
    assert access == {("keyring_access", n) for n in KEYRING} | {
        ("metrics_token_access", n) for n in METRICS_TOKEN
    }


# Who invokes each internal function: Pub/Sub's push identity, Cloud Scheduler's, or both.
INTERNAL_INVOKERS = {
    "process_task": {"pubsub_push"},
    "redispatch": {"scheduler"},
    "schedule_tick": {"scheduler"},
    "deliver_webhooks": {"pubsub_push", "scheduler"},
}
INTERNAL_GRANTS = sum(map(len, INTERNAL_INVOKERS.values()))


def expected_invokers(case: str) -> dict[str, set[str]]:
    """Function -> the keys of its run.invoker members, from the case's variables."""
    values = case_values(case)
    users = {"public"} if values.get("public_access", False) else set()
    users |= set(values.get("invoker_members", []))
    names = package.discover_functions(REPO_ROOT)
    return {n: users if n in USER_FACING else INTERNAL_INVOKERS.get(n, set()) for n in names}


def test_cases_plan_public_access_both_ways() -> None:
    """Otherwise the invoker checks below would only ever see one branch."""
    assert {bool(case_values(c).get("public_access", False)) for c in CASES} == {True, False}


@pytest.mark.parametrize("case", sorted(CASES))
def test_invokers_in_plan(case: str, plans: dict[str, Any]) -> None:
    values = case_values(case)
    members = resources(plans[case], "google_cloud_run_v2_service_iam_member")
    planned: dict[str, set[str]] = {}
    for r in members:
        function = index_of(r, r'module\.function\["(\w+)"\]')
        key = index_of(r, r'\.invoker\["([^"]+)"\]$')
        planned.setdefault(function, set()).add(key)
        assert r["values"]["role"] == "roles/run.invoker", r["address"]
        # Members of accounts created in the same apply are unknown at plan time.
        member = r["values"].get("member")
        if key == "public":
            assert member == "allUsers", r["address"]
        elif key in values.get("invoker_members", []):
            assert member == key, r["address"]
        else:
            assert member is None, r["address"]
    expected = expected_invokers(case)
    assert {f: k for f, k in planned.items() if k} == {f: k for f, k in expected.items() if k}
    public = bool(values.get("public_access", False))
    users = public + len(values.get("invoker_members", []))
    assert len(members) == INTERNAL_GRANTS + len(USER_FACING) * users


@pytest.mark.parametrize("case", sorted(CASES))
def test_iam_in_plan(case: str, plans: dict[str, Any]) -> None:
    public = bool(case_values(case).get("public_access", False))
    counted: dict[str, int] = {}
    open_members: list[dict[str, Any]] = []
    for r in walk(plans[case]["planned_values"]["root_module"]):
        if not r["type"].endswith(("_iam_member", "_iam_binding", "_iam_policy")):
            continue
        assert r["type"].endswith("_iam_member"), f"{r['address']}: authoritative IAM"
        counted[r["type"]] = counted.get(r["type"], 0) + 1
        assert r["values"]["role"] in ALLOWED_ROLES, r["address"]
        if r["values"].get("member") in ("allUsers", "allAuthenticatedUsers"):
            open_members.append(r)
    # Every grant the plan holds, counted by kind: one more or less is a reviewed change.
    invokers = len(expected_invokers(case)["health"])
    assert counted == {
        "google_cloud_run_v2_service_iam_member": INTERNAL_GRANTS + len(USER_FACING) * invokers,
        # tasks database for every function, keys database for its readers, 2 for builds,
        # and Cloud Trace's agent role for every function that makes spans
        "google_project_iam_member": len(functions(plans[case])) * 2
        - len(UNTRACED)
        + len(KEYS_READERS)
        + 2,
        "google_secret_manager_secret_iam_member": len(KEYRING) + len(METRICS_TOKEN),
        # publishers, health viewing the tasks topic, the agent publishing to the backstop
        "google_pubsub_topic_iam_member": sum(map(len, PUBLISHERS.values())) + 1 + 1,
        "google_pubsub_subscription_iam_member": 1,
        "google_service_account_iam_member": 1,
        "google_storage_bucket_iam_member": 1,
    }
    if public:
        opened = sorted(index_of(r, r'function\["(\w+)"\]') for r in open_members)
        assert opened == sorted(USER_FACING)
    else:
        assert open_members == [], f"{case}: public members without public_access"


@pytest.mark.parametrize("env", ENV_NAMES)
def test_topic_publishers_in_plan(env: str, plans: dict[str, Any]) -> None:
    topics = {r["name"]: r["values"]["name"] for r in resources(plans[env], "google_pubsub_topic")}
    grants = {
        (r["values"]["topic"], r["values"]["role"], r["name"], r.get("index"))
        for r in resources(plans[env], "google_pubsub_topic_iam_member")
    }
    publisher = "roles/pubsub.publisher"
    expected: set[tuple[str, str, str, str | None]] = {
        (topics[topic], publisher, "publish", f"{name}/{topic}")
        for topic, names in PUBLISHERS.items()
        for name in names
    }
    expected.add((topics["tasks"], "roles/pubsub.viewer", "view", "health/tasks"))
    # Pub/Sub's dead-letter policy forwards to the backstop only.
    expected.add((topics["backstop"], publisher, "pubsub_agent_backstop_publisher", None))
    assert grants == expected


@pytest.mark.parametrize("env", ENV_NAMES)
def test_firestore_grants_in_plan(env: str, plans: dict[str, Any]) -> None:
    values = tfvars(env)
    databases = {
        r["name"]: r["values"]["name"] for r in resources(plans[env], "google_firestore_database")
    }
    grants = []
    tracing: set[str] = set()
    for r in resources(plans[env], "google_project_iam_member"):
        role = r["values"]["role"]
        if r["name"] == "trace_agent":
            assert role == "roles/cloudtrace.agent", r["address"]
            assert r["values"]["condition"] == [], r["address"]
            tracing.add(r["index"])
            continue
        if not role.startswith("roles/datastore."):
            assert r["name"] == "builder", r["address"]
            assert r["values"]["condition"] == [], r["address"]
            continue
        (condition,) = r["values"]["condition"]
        match = re.fullmatch(
            rf'resource\.name == "projects/{re.escape(values["project_id"])}/databases/([^"]+)"',
            condition["expression"],
        )
        assert match, condition["expression"]
        grants.append((r["index"], match.group(1), role))
    names = set(package.discover_functions(REPO_ROOT))
    assert tracing == names - UNTRACED  # spans go to Cloud Trace in every environment
    assert len(grants) == len(names) + len(KEYS_READERS), grants
    assert sorted(f for f, db, _ in grants if db == databases["this"]) == sorted(names)
    on_keys = {(f, role) for f, db, role in grants if db == databases["keys"]}
    assert on_keys == {(f, "roles/datastore.viewer") for f in KEYS_READERS}


@pytest.mark.parametrize("env", ENV_NAMES)
def test_firestore_per_environment(env: str, plans: dict[str, Any]) -> None:
    values = tfvars(env)
    databases = {r["name"]: r["values"] for r in resources(plans[env], "google_firestore_database")}
    assert set(databases) == {"this", "keys"}
    assert databases["keys"]["name"] == "aia-keys"
    for db in databases.values():
        assert db["type"] == "FIRESTORE_NATIVE"
        assert db["location_id"] == values["firestore_location"]
        pitr = "ENABLED" if values["point_in_time_recovery"] else "DISABLED"
        assert db["point_in_time_recovery_enablement"] == f"POINT_IN_TIME_RECOVERY_{pitr}"
        protected = values["delete_protection"]
        assert db["delete_protection_state"] == (
            "DELETE_PROTECTION_ENABLED" if protected else "DELETE_PROTECTION_DISABLED"
        )
        assert db["deletion_policy"] == ("ABANDON" if protected else "DELETE")
    if env in ("staging", "prod"):
        assert values["delete_protection"] is True
    (bucket,) = resources(plans[env], "google_storage_bucket")
    assert bucket["values"]["force_destroy"] is (env == "dev")
    # No TTL on the keys database: a key lives until it is revoked.
    ttl = resources(plans[env], "google_firestore_field")
    assert ttl
    assert {f["values"]["database"] for f in ttl} == {databases["this"]["name"]}


def test_prod_user_facing_functions_stay_warm(plans: dict[str, Any]) -> None:
    planned = functions(plans["prod"])
    assert set(planned) >= USER_FACING
    for name, fn in planned.items():
        service = fn["service_config"][0]
        if name in USER_FACING:
            if name in WARM_IN_PROD:
                assert service["min_instance_count"] >= 1, name
            assert service["ingress_settings"] == "ALLOW_INTERNAL_AND_GCLB", name
        else:
            assert service["ingress_settings"] == "ALLOW_INTERNAL_ONLY", name


def test_prod_has_the_load_balancer(plans: dict[str, Any]) -> None:
    (url_map,) = resources(plans["prod"], "google_compute_url_map")
    rules = url_map["values"]["path_matcher"][0]["route_rules"]
    # One per rule of the route table (test_hcl compares them rule for rule).
    assert len(rules) == len(routing_rules())
    for env in ("dev", "staging"):
        assert not resources(plans[env], "google_compute_url_map")


@pytest.mark.parametrize("env", ENV_NAMES)
def test_push_subscriptions_target_the_worker(env: str, plans: dict[str, Any]) -> None:
    subs = {r["name"]: r["values"] for r in resources(plans[env], "google_pubsub_subscription")}
    assert set(subs) == {"worker_push", "backstop_push", "dead_letter_hold", "webhook_push"}
    worker, backstop = subs["worker_push"], subs["backstop_push"]
    assert worker["ack_deadline_seconds"] == 600
    attempts = tfvars(env).get("max_delivery_attempts", 10)
    assert worker["dead_letter_policy"][0]["max_delivery_attempts"] == attempts
    assert backstop["dead_letter_policy"] == []
    assert backstop["ack_deadline_seconds"] == 600
    for sub in (worker, backstop):
        assert sub["retry_policy"] == [{"minimum_backoff": "10s", "maximum_backoff": "600s"}]
        assert len(sub["push_config"][0]["oidc_token"]) == 1
    worker_fn = functions(plans[env])["process_task"]
    assert worker_fn["service_config"][0]["timeout_seconds"] <= worker["ack_deadline_seconds"]
    # The sweep is told the same backoff and waits it out.
    env_vars = worker_fn["service_config"][0]["environment_variables"]
    assert env_vars["AIA_RETRY_MAX_BACKOFF_S"] == "600"
    assert float(env_vars["AIA_REDISPATCH_AFTER_S"]) > 600 + 5
    # The webhook topic pushes to the delivery function, which acks within the deadline.
    hooks = subs["webhook_push"]
    assert hooks["dead_letter_policy"] == []
    assert hooks["retry_policy"] == [{"minimum_backoff": "10s", "maximum_backoff": "600s"}]
    deliver = functions(plans[env])["deliver_webhooks"]["service_config"][0]
    assert deliver["timeout_seconds"] <= hooks["ack_deadline_seconds"]
