"""checkov over the deploy root with each environment's tfvars: 0 failed, skips justified inline.

checkov runs from its own virtualenv (`.venv-checkov-<hash>/`, made on first use
from requirements-checkov.txt): its HCL parser is a different `hcl2` package
from the python-hcl2 the other tests use.
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import pytest

from tests.infra.hclfiles import DEPLOY, ENV_NAMES, ENVIRONMENTS, TERRAFORM, parse_file
from tools.tfschema.venvs import REPO_ROOT, ensure_venv

pytestmark = pytest.mark.infra

CONFIG = REPO_ROOT / ".checkov.yaml"
SKIP = re.compile(r"#\s*checkov:skip=([A-Z0-9_]+)(?::(.*))?")


@pytest.fixture(scope="session")
def checkov_reports() -> dict[str, dict[str, Any]]:
    venv = ensure_venv("checkov", REPO_ROOT / "requirements-checkov.txt")
    checkov = venv / "bin" / "checkov"
    procs = {
        env: subprocess.Popen(
            [
                *(str(checkov), "-d", ".", "--config-file", str(CONFIG), "-o", "json"),
                *("--var-file", str(ENVIRONMENTS / env / "terraform.tfvars")),
            ],
            cwd=DEPLOY,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for env in ENV_NAMES
    }
    reports = {}
    for env, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert out.strip(), f"checkov printed nothing for {env} (rc={proc.returncode}):\n{err}"
        parsed = json.loads(out)
        (report,) = parsed if isinstance(parsed, list) else [parsed]
        reports[env] = report
    return reports


@pytest.mark.parametrize("env", ENV_NAMES)
def test_checkov_passes(env: str, checkov_reports: dict[str, dict[str, Any]]) -> None:
    report = checkov_reports[env]
    assert report["check_type"] == "terraform"
    summary = report["summary"]
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
        for c in report["results"].get("failed_checks", [])
    ]
    assert summary["failed"] == 0, "\n".join(failed)
    assert summary["parsing_errors"] == 0
    # The roots are scanned with their modules: a near-empty scan means a broken path.
    assert summary["resource_count"] > 40
    assert summary["passed"] > 40


def test_every_skip_is_justified() -> None:
    skips = []
    for path in TERRAFORM.rglob("*.tf"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            match = SKIP.search(line)
            if match:
                skips.append((f"{path.relative_to(REPO_ROOT)}:{number}", *match.groups()))
    assert skips, "expected the documented inline skips"
    for where, check, reason in skips:
        assert len((reason or "").strip()) >= 40, f"{where}: skip of {check} needs a reason"


def test_no_skips_outside_the_code() -> None:
    config = CONFIG.read_text()
    assert "skip-check" not in config
    assert "soft-fail" not in config
    # A skip hidden in a tfvars file would not be next to the resource it excuses.
    for env in ENV_NAMES:
        assert "checkov" not in (ENVIRONMENTS / env / "terraform.tfvars").read_text()
        parse_file(ENVIRONMENTS / env / "terraform.tfvars")


def test_requirements_are_pinned() -> None:
    for line in (REPO_ROOT / "requirements-checkov.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[^=\s]+", line), line
    assert "checkov==" in (REPO_ROOT / "requirements-checkov.txt").read_text()
