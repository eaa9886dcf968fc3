"""Terraform itself: fmt, validate, plans of every environment and `terraform test`.

The google provider cannot be downloaded here. `tools.tfschema` serves its real
schema (8.x, from the cdktn-provider-google wheel, committed as
google.schema.json) through a provider written in Python, so validate, plan and
test check every argument, block, type and reference as the real provider
would, with no network. Plans of each environment with its own tfvars give the
evaluated configuration the per-environment assertions run on.
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

from shared.config import ENVIRONMENT
from tests.infra.hclfiles import ENV_NAMES, TERRAFORM, tfvars
from tests.infra.policy import ALLOWED_ROLES, KEYRING, NOT_PLAIN_ENV, USER_FACING
from tools import package
from tools.tfschema import generate
from tools.tfschema.offline import OfflineTerraform, offline_terraform
from tools.tfschema.venvs import REPO_ROOT

pytestmark = pytest.mark.infra

MODULE_TEST_VARS: dict[str, Callable[[Path], list[str]]] = {
    "task_service": lambda bundles: ["-var", f"bundle_dir={bundles}"],
    "cloud_function": lambda bundles: ["-var", f"source_archive={bundles}/health.zip"],
    "https_gateway": lambda bundles: [],
}


@pytest.fixture(scope="session")
def tf(tmp_path_factory: pytest.TempPathFactory) -> OfflineTerraform:
    runner = offline_terraform(tmp_path_factory.mktemp("tfprovider"))
    if runner is None:
        pytest.skip("terraform is not on PATH: validate/plan/test not run (CI has it)")
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
    for backend in root.glob("environments/*/backend.tf"):
        backend.unlink()
    return root


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundles")
    package.build_all(REPO_ROOT, out)
    return out


@pytest.fixture(scope="session")
def plans(tf: OfflineTerraform, tf_tree: Path, bundle_dir: Path) -> dict[str, dict[str, Any]]:
    """Each environment planned with its own terraform.tfvars, as JSON."""
    out = {}
    for env in ENV_NAMES:
        root = tf_tree / "environments" / env
        tf.run("get", cwd=root)
        tf.run("plan", "-out=plan.bin", f"-var=bundle_dir={bundle_dir}", "-lock=false", cwd=root)
        out[env] = json.loads(tf.run("show", "-json", "plan.bin", cwd=root).stdout)
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
        pytest.skip("terraform is not on PATH")
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
    """Guards hand edits of google.schema.json and changes to the generator."""
    wheels = sorted(
        generate.CACHE_DIR.glob(f"cdktn_provider_google-{generate.WHEEL_VERSION}-*.whl")
    )
    if not wheels:
        pytest.skip("cdktn-provider-google wheel not cached: python -m tools.tfschema.generate")
    resources_used, data_used = generate.used_types()
    fresh = generate.render(generate.generate(resources_used, data_used, wheels[0]))
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
    *(f"environments/{env}" for env in ENV_NAMES),
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


@pytest.mark.parametrize("module", sorted(MODULE_TEST_VARS))
def test_terraform_test(module: str, tf: OfflineTerraform, tf_tree: Path, bundle_dir: Path) -> None:
    root = tf_tree / "modules" / module
    assert list((root / "tests").glob("*.tftest.hcl")), f"{module} has no terraform tests"
    tf.run("get", cwd=root)
    result = tf.run("test", "-no-color", *MODULE_TEST_VARS[module](bundle_dir), cwd=root)
    assert "0 failed" in result.stdout, result.stdout


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
        r["values"]["secret_id"]: ring
        for r in resources(plans[env], "google_secret_manager_secret")
        for ring in ("public", "private")
        if r["index"] == ring
    }
    for name, fn in functions(plans[env]).items():
        service = fn["service_config"][0]
        assert set(service["environment_variables"]) == expected, name
        assert service["environment_variables"]["AIA_VERSION"] == "dev"
        secret_env = {s["key"]: s["secret"] for s in service["secret_environment_variables"]}
        if name in KEYRING:
            assert secrets[secret_env.pop("AIA_KEYRING")] == KEYRING[name], name
        assert secret_env == {}, name


@pytest.mark.parametrize("env", ENV_NAMES)
def test_iam_in_plan(env: str, plans: dict[str, Any]) -> None:
    public = tfvars(env).get("public_access", False)
    for type_ in {r["type"] for r in walk(plans[env]["planned_values"]["root_module"])}:
        if not type_.endswith("_iam_member"):
            continue
        for r in resources(plans[env], type_):
            assert r["values"]["role"] in ALLOWED_ROLES, r["address"]
            # Members of accounts created in the same apply are unknown: omitted here.
            if r["values"].get("member") in ("allUsers", "allAuthenticatedUsers"):
                assert public, f"{env}: {r['address']} is public without public_access"
                assert type_ == "google_cloud_run_v2_service_iam_member"
                function = re.search(r'module\.function\["(\w+)"\]', r["address"])
                assert function, r["address"]
                assert function.group(1) in USER_FACING, r["address"]


@pytest.mark.parametrize("env", ENV_NAMES)
def test_firestore_per_environment(env: str, plans: dict[str, Any]) -> None:
    (db,) = resources(plans[env], "google_firestore_database")
    values = db["values"]
    assert values["point_in_time_recovery_enablement"] == "POINT_IN_TIME_RECOVERY_ENABLED"
    assert values["type"] == "FIRESTORE_NATIVE"
    if env in ("staging", "prod"):
        assert values["delete_protection_state"] == "DELETE_PROTECTION_ENABLED"
        assert values["deletion_policy"] == "ABANDON"
    (bucket,) = resources(plans[env], "google_storage_bucket")
    assert bucket["values"]["force_destroy"] is (env == "dev")


def test_prod_user_facing_functions_stay_warm(plans: dict[str, Any]) -> None:
    for name, fn in functions(plans["prod"]).items():
        service = fn["service_config"][0]
        if name in USER_FACING:
            assert service["min_instance_count"] >= 1, name
            assert service["ingress_settings"] == "ALLOW_INTERNAL_AND_GCLB", name
        else:
            assert service["ingress_settings"] == "ALLOW_INTERNAL_ONLY", name


def test_prod_has_the_load_balancer(plans: dict[str, Any]) -> None:
    (url_map,) = resources(plans["prod"], "google_compute_url_map")
    rules = url_map["values"]["path_matcher"][0]["route_rules"]
    assert len(rules) == 6
    for env in ("dev", "staging"):
        assert not resources(plans[env], "google_compute_url_map")


@pytest.mark.parametrize("env", ENV_NAMES)
def test_worker_subscription_targets_the_worker(env: str, plans: dict[str, Any]) -> None:
    subs = {r["name"]: r["values"] for r in resources(plans[env], "google_pubsub_subscription")}
    worker = subs["worker_push"]
    assert worker["ack_deadline_seconds"] == 600
    assert worker["dead_letter_policy"][0]["max_delivery_attempts"] == 10
    assert len(worker["push_config"][0]["oidc_token"]) == 1
    assert "dead_letter_hold" in subs
    worker_fn = functions(plans[env])["process_task"]
    assert worker_fn["service_config"][0]["timeout_seconds"] <= worker["ack_deadline_seconds"]
