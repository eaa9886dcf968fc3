"""cloudbuild.yaml: substitutions, shell variables, pinned images, the prod gate.

Cloud Build replaces `$NAME` and `${NAME}` in a step's fields with substitutions
before the shell sees them; an unknown one fails the build, or worse, a
matching one silently replaces what was meant as a shell variable. Shell
variables must be written `$$NAME`. No offline tool checks this: this test does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.infra.hclfiles import ENV_NAMES
from tools.tfschema.venvs import REPO_ROOT

pytestmark = pytest.mark.infra

CLOUDBUILD = REPO_ROOT / "cloudbuild.yaml"
BUILT_IN = {
    "PROJECT_ID",
    "PROJECT_NUMBER",
    "BUILD_ID",
    "LOCATION",
    "TRIGGER_NAME",
    "TRIGGER_BUILD_CONFIG_PATH",
    "COMMIT_SHA",
    "SHORT_SHA",
    "REVISION_ID",
    "BRANCH_NAME",
    "TAG_NAME",
    "REPO_NAME",
    "REPO_FULL_NAME",
    "SERVICE_ACCOUNT_EMAIL",
    "SERVICE_ACCOUNT",
    "_HEAD_BRANCH",
    "_BASE_BRANCH",
    "_HEAD_REPO_URL",
    "_PR_NUMBER",
}
# $$ is an escaped dollar; otherwise $NAME or ${NAME} is a substitution.
_DOLLAR = re.compile(r"\$(\$|\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def substitution_names(text: str) -> list[str]:
    """Names Cloud Build would substitute in `text` (escaped `$$` skipped)."""
    return [m.group(2) or m.group(3) for m in _DOLLAR.finditer(text) if m.group(1) != "$"]


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)


def check_dollars(config: dict[str, Any]) -> list[str]:
    declared = set(config.get("substitutions", {}))
    problems = []
    for step in config["steps"]:
        for text in strings({k: v for k, v in step.items() if k != "id"}):
            for name in substitution_names(text):
                if name in BUILT_IN or name in declared:
                    continue
                problems.append(
                    f"step {step.get('id')}: ${name} is not a substitution: "
                    f"write $${name} for a shell variable"
                    if not name.startswith("_")
                    else f"step {step.get('id')}: substitution {name} is not declared"
                )
    return problems


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CLOUDBUILD.read_text())
    return loaded


def test_dollars_are_substitutions_or_escaped(config: dict[str, Any]) -> None:
    assert check_dollars(config) == []


def test_the_check_catches_an_unescaped_shell_variable() -> None:
    bad: dict[str, Any] = {
        "substitutions": {"_ENV": "dev"},
        "steps": [
            {"id": "x", "name": "img:1", "args": ["-c", 'for f in *; do echo "$f ${_ENV}"; done']}
        ],
    }
    message = "step x: $f is not a substitution: write $$f for a shell variable"
    assert check_dollars(bad) == [message]
    bad["steps"][0]["args"] = ["-c", "echo ${_UNDECLARED} $$HOME $SHORT_SHA"]
    assert check_dollars(bad) == ["step x: substitution _UNDECLARED is not declared"]


def test_declared_substitutions_are_used(config: dict[str, Any]) -> None:
    used = {n for step in config["steps"] for t in strings(step) for n in substitution_names(t)}
    assert set(config["substitutions"]) <= used


def test_builder_images_are_pinned(config: dict[str, Any]) -> None:
    for step in config["steps"]:
        image = step["name"]
        assert "@sha256:" in image or re.search(r":\d+\.\d+\.\d+", image), (
            f"step {step['id']}: pin {image} to a version"
        )
        assert not image.endswith((":latest", ":stable"))


def test_pipeline_order(config: dict[str, Any]) -> None:
    ids = [step["id"] for step in config["steps"]]
    assert ids.index("test") < ids.index("package") < ids.index("plan") < ids.index("apply")
    test_script = " ".join(strings(config["steps"][ids.index("test")]))
    assert "make test" in test_script
    assert "make package" in " ".join(strings(config["steps"][ids.index("package")]))
    plan = " ".join(strings(config["steps"][ids.index("plan")]))
    for command in ("terraform init", "terraform validate", "terraform plan", "-out="):
        assert command in plan
    assert "-backend-config=" in plan


def test_plan_and_apply_run_the_deploy_root_with_the_environment_files(
    config: dict[str, Any],
) -> None:
    steps = {step["id"]: step for step in config["steps"]}
    plan = " ".join(strings(steps["plan"]))
    for id_ in ("plan", "apply"):
        assert steps[id_]["dir"] == "terraform/deploy", id_
    backend = '-backend-config="../environments/${_ENV}/backend.hcl"'
    var_file = '-var-file="../environments/${_ENV}/terraform.tfvars"'
    assert backend in plan
    assert var_file in plan
    assert "-reconfigure" in plan  # never plan against the previous build's state
    # Every environment the guard admits has both files where the steps look.
    guard = " ".join(strings(steps["guard"]))
    admitted = re.search(r'case "\$\{_ENV\}" in ([a-z|]+)\)', guard)
    assert admitted, guard
    envs = admitted.group(1).split("|")
    assert sorted(envs) == sorted(ENV_NAMES)
    root = REPO_ROOT / steps["plan"]["dir"]
    for env in envs:
        for path in (backend, var_file):
            relative = path.split("=", 1)[1].strip('"').replace("${_ENV}", env)
            assert (root / relative).is_file(), relative


def test_apply_uses_a_saved_plan_and_prod_a_reviewed_one(config: dict[str, Any]) -> None:
    steps = {step["id"]: " ".join(strings(step)) for step in config["steps"]}
    apply = steps["apply"]
    assert re.search(r"terraform apply [^\n]*\"\$\$plan\"", apply)
    assert "-auto-approve" not in apply  # a saved plan needs none
    assert 'if [ "${_ENV}" = "prod" ]; then plan=/workspace/reviewed.tfplan' in apply
    gate = steps["publish-or-fetch-plan"]
    assert "prod applies a reviewed plan only" in gate
    assert config["substitutions"]["_APPLY"] == "false"
