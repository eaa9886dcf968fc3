"""schemathesis against the live local stack, from the document the stack itself serves.

Every operation, with the dev API key, the operators' metrics token and no
credentials, through every
check schemathesis has (server errors, undeclared statuses, bodies and headers
off the schema, schema-valid requests refused, schema-invalid ones accepted,
undeclared methods without 405 and Allow, stateful links). Any failure fails
the test, 5xx included: a healthy stack has no dependency to blame.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from devtools.stack_process import RunningStack, running_stack

pytestmark = pytest.mark.e2e

# About half a minute per run on two shared cores; the seed makes CI's runs repeatable.
MAX_EXAMPLES = 10
SEED = 1
# page_token is opaque: only tokens this API issued are valid, so a schema-valid
# string this API never issued is the declared 400, not a valid request refused
# (the other statuses are schemathesis' defaults). The same holds for every list.
# createSchedule's valid cases get a real cron, zone and task type from the hooks.
CONFIG = "".join(
    f"""\
[[operations]]
include-operation-id = "{operation}"
checks.positive_data_acceptance.expected-statuses = [
    "2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx",
]
"""
    for operation in (
        "listTasks",
        "listSchedules",
        "listWebhooks",
        "listWebhookDeliveries",
        "listLedger",
        "listWorkflows",
    )
)
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    # A stack of its own: the fuzzer's tasks must not reach the exact counts other e2e
    # tests check. Its health checks get the longest budget the settings allow, so a
    # busy shared machine is not mistaken for a dependency outage.
    saved = os.environ.get("AIA_HEALTH_TIMEOUT_S")
    os.environ["AIA_HEALTH_TIMEOUT_S"] = "2"
    try:
        with running_stack(tmp_path_factory.mktemp("schemathesis-stack")) as running:
            yield running
    finally:
        if saved is None:
            os.environ.pop("AIA_HEALTH_TIMEOUT_S", None)
        else:
            os.environ["AIA_HEALTH_TIMEOUT_S"] = saved


def summary(report: dict[str, Any]) -> str:
    """What ran and what it found, one line per fact, for the test's output and the record."""
    lines = [
        f"schemathesis {report['schemathesis_version']}, seed {report['seed']}, "
        f"{report['running_time']:.0f} s",
        f"operations: {report['operations']['tested']} tested of {report['operations']['total']}",
        f"test cases: {report['test_cases']['generated']} generated, "
        f"{report['test_cases']['with_failures']} with failures",
        "phases: "
        + ", ".join(f"{name} {phase['status']}" for name, phase in report["phases"].items()),
    ]
    for failure in report["failures"]:
        lines.append(
            f"FAILURE {failure['code']} {failure['title']} x{failure['count']}: "
            + ", ".join(failure["operations"])
        )
    lines += [f"ERROR {error}" for error in report["errors"]]
    return "\n".join(lines)


@pytest.mark.parametrize("credentials", ["api-key", "metrics-token", "none"])
def test_schemathesis_finds_nothing(stack: RunningStack, tmp_path: Path, credentials: str) -> None:
    served = requests.get(f"{stack.base_url}/openapi.json", timeout=30)
    assert served.status_code == 200, served.text
    document = served.json()
    operations = sum(len(methods) for methods in document["paths"].values())
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG, encoding="utf-8")
    report_path = tmp_path / "report.json"
    args = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        f"{stack.base_url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        # One worker: concurrent generation trips a CPython 3.11 ast.parse bug
        # ("AST constructor recursion depth mismatch") inside hypothesis.
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--report",
        "json",
        "--report-json-path",
        str(report_path),
    ]
    if credentials == "api-key":
        assert stack.api_key
        args += ["--header", f"Authorization: Bearer {stack.api_key}"]
    elif credentials == "metrics-token":
        # The operators' token: /health and /metrics answer in full, the task API says 401.
        token = (stack.state_dir / "metrics-token").read_text(encoding="utf-8").strip()
        args += ["--header", f"Authorization: Bearer {token}"]
    run = subprocess.run(
        args,
        cwd=tmp_path,  # hypothesis keeps its example database here, not in the checkout
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": str(HOOKS)},
    )
    assert report_path.exists(), f"no report (rc={run.returncode}):\n{run.stdout}\n{run.stderr}"
    report = json.loads(report_path.read_text(encoding="utf-8"))
    text = summary(report)
    print(f"[{credentials}]\n{text}")
    (tmp_path / "schemathesis.log").write_text(run.stdout, encoding="utf-8")
    # Every operation of the document (schemathesis leaves out the document's own).
    assert report["operations"]["total"] >= operations - 1, text
    assert report["operations"]["tested"] == report["operations"]["total"], text
    assert report["complete"], text
    details = f"{text}\n\n{run.stdout[-30000:]}"
    assert not report["failures"], details
    assert not report["errors"], details
    assert run.returncode == 0, f"{text}\n\n{run.stdout[-30000:]}\n{run.stderr[-3000:]}"
