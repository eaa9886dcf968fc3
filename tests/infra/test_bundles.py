"""Deploy bundles: what is built is exactly what deploys, and it serves on its own.

Each bundle is loaded by a fresh `python -I` in a virtualenv made from the bundle's
requirements.txt only, with the bundle as working directory, and answers one real
request of its kind against the emulators: a submit, a status read, a Pub/Sub push
delivery, a sweep, a scrape, a readiness check. So the imports behind
`shared.providers`, made only when a request needs them, run here too, and the
seed's `ModuleNotFoundError` on deploy fails here instead.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from devtools.emulators import reset_firestore, reset_pubsub
from shared.config import load_settings
from shared.queries import SCHEDULES, TASKS
from shared.security.keyring import KeyRing, generate_keyring
from tests.conftest import TEST_PROJECT, observed_topics
from tests.support.health import assert_health
from tests.support.pubsub import Received, pull
from tools import package
from tools.tfschema.venvs import REPO_ROOT, ensure_venv, venv_python

pytestmark = pytest.mark.infra

PROBE = (Path(__file__).parent / "bundle_probe.py").read_text(encoding="utf-8")
FUNCTIONS = package.discover_functions(REPO_ROOT)
# What a request may leave missing without failing: nothing yet. An entry here
# needs a reason (an optional accelerator tried inside try/except, say).
OPTIONAL_IMPORTS: frozenset[str] = frozenset()
TASKS_TOPIC = "aia-tasks"
DEAD_LETTER_TOPIC = "aia-tasks-dead-letter"


@dataclass(frozen=True)
class Request:
    method: str = "GET"
    path: str = "/"
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def as_json(self) -> str:
        return json.dumps(
            {
                "method": self.method,
                "path": self.path,
                "headers": self.headers,
                "body_b64": base64.b64encode(self.body).decode(),
            }
        )

    @classmethod
    def post_json(cls, path: str, body: Any, headers: dict[str, str] | None = None) -> Request:
        headers = {"Content-Type": "application/json", **(headers or {})}
        return cls("POST", path, headers, json.dumps(body).encode())


@pytest.fixture(scope="session")
def runtime_venv() -> Path:
    """A virtualenv with the runtime requirements only (what Cloud Functions installs)."""
    return ensure_venv("bundle", REPO_ROOT / "requirements.txt")


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, package.Bundle]:
    out = tmp_path_factory.mktemp("build")
    return {b.name: b for b in package.build_all(REPO_ROOT, out)}


def probe(
    venv: Path,
    bundle_dir: Path,
    target: str,
    signature_type: str,
    request: Request | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    home = bundle_dir.parent / ".home"
    home.mkdir(exist_ok=True)
    environment = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(home),  # no gcloud credentials from the developer's home
        "GOOGLE_CLOUD_PROJECT": "aia-bundle-check",
        # Never look for the GCE metadata server: clients fail fast without credentials.
        "NO_GCE_CHECK": "True",
        "GCE_METADATA_HOST": "127.0.0.1:9",
        "GCE_METADATA_IP": "127.0.0.1:9",
        "AIA_LOG_LEVEL": "ERROR",
        **(env or {}),
    }
    result = subprocess.run(
        [
            str(venv_python(venv)),
            "-I",
            "-c",
            PROBE,
            target,
            signature_type,
            (request or Request()).as_json(),
        ],
        cwd=bundle_dir,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, f"probe printed no report (rc={result.returncode}):\n{result.stderr[-3000:]}"
    report: dict[str, Any] = json.loads(lines[-1])
    report["stderr"] = result.stderr[-3000:]
    return report


def assert_serves(report: dict[str, Any], status: int = 200) -> dict[str, Any]:
    """The bundle loaded, served, missed no module of its own and answered `status`."""
    assert report["stage"] == "served", (
        f"{report['target']} failed to {report['stage']}: {report.get('error')}\n{report['stderr']}"
    )
    missing = [m for m in report["failed_imports"] if m.split(".")[0] not in OPTIONAL_IMPORTS]
    assert not missing, f"{report['target']}: imports failed while serving: {missing}"
    assert report["status"] == status, (
        f"{report['target']} answered {report['status']}, expected {status}: "
        f"{report['body'][:1000]}\n{report['stderr']}"
    )
    return report


def test_functions_discovered() -> None:
    assert FUNCTIONS, "no functions/<name>/main.py: nothing would deploy"


@pytest.mark.parametrize("name", FUNCTIONS)
def test_bundle_has_exactly_main_shared_tasks_requirements(
    name: str, bundles: dict[str, package.Bundle]
) -> None:
    bundle = bundles[name]
    expected = ["__pycache__", "main.py", "requirements.txt", "shared", "tasks"]
    top = sorted(p.name for p in bundle.directory.iterdir())
    assert top == expected
    names = zipfile.ZipFile(bundle.zip_path).namelist()
    assert names == sorted(names)
    assert {n.split("/")[0] for n in names} == set(expected)
    assert "tasks/__init__.py" in names  # the team's task types travel with every function
    assert not [n for n in names if "/tests/" in n or n.endswith(".pyo")]
    # Bytecode for the runtime, one per bundled module, and none the working tree left.
    sources = {n for n in names if n.endswith(".py")}
    compiled = {importlib.util.cache_from_source(n) for n in sources}
    assert compiled <= set(names)
    assert not [n for n in names if n.endswith(".pyc") and n not in compiled]
    assert (bundle.directory / "requirements.txt").read_bytes() == (
        REPO_ROOT / "requirements.txt"
    ).read_bytes()


def test_zips_are_reproducible(tmp_path: Path, bundles: dict[str, package.Bundle]) -> None:
    again = {b.name: b for b in package.build_all(REPO_ROOT, tmp_path)}
    for name, bundle in bundles.items():
        assert again[name].zip_path.read_bytes() == bundle.zip_path.read_bytes(), name
        assert again[name].sha256 == bundle.sha256
    manifest = json.loads((tmp_path / package.MANIFEST).read_text())
    assert set(manifest) == set(FUNCTIONS)


def test_bytecode_is_unchecked_hash_for_the_runtime(bundles: dict[str, package.Bundle]) -> None:
    assert sys.implementation.cache_tag == package.bytecode_tag(package.DEFAULT_RUNTIME)
    bundle = bundles["submit_task"]
    pyc = (bundle.directory / importlib.util.cache_from_source("shared/config.py")).read_bytes()
    assert pyc[:4] == importlib.util.MAGIC_NUMBER
    # PEP 552 flags: hash-based (bit 0), not checked against the source (bit 1 clear).
    assert int.from_bytes(pyc[4:8], "little") == 0b01


def test_terraform_runtime_default_is_what_the_bytecode_is_for() -> None:
    variables = (REPO_ROOT / "terraform/modules/cloud_function/variables.tf").read_text()
    runtime = variables.split('variable "runtime"', 1)[1].split("}", 1)[0]
    assert f'default     = "{package.DEFAULT_RUNTIME}"' in runtime


def test_a_bundle_runs_its_bytecode(tmp_path: Path, runtime_venv: Path) -> None:
    root = _fake_repo(tmp_path / "repo", "import shared.config")
    bundle = package.build_all(root, tmp_path / "build")[0]
    # Were the source compiled at the cold start, this is what would run.
    source = bundle.directory / "shared" / "config.py"
    source.write_text("raise SystemExit('compiled at start')\n")
    assert_serves(probe(runtime_venv, bundle.directory, "probe", "http"))


def test_another_runtime_gets_no_bytecode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _fake_repo(tmp_path / "repo", "import shared.config")
    bundle = package.build_all(root, tmp_path / "build", runtime="python399")[0]
    assert not [n for n in zipfile.ZipFile(bundle.zip_path).namelist() if n.endswith(".pyc")]
    assert "cpython-399" in capsys.readouterr().err
    with pytest.raises(package.PackagingError, match="not a Python runtime"):
        package.bytecode_tag("nodejs20")


def test_a_module_that_does_not_compile_is_a_packaging_error(tmp_path: Path) -> None:
    root = _fake_repo(tmp_path / "repo", "import shared.config")
    (root / "shared" / "broken.py").write_text("def broken(:\n")
    with pytest.raises(package.PackagingError, match=r"shared/broken\.py does not compile"):
        package.build_all(root, tmp_path / "build")


def test_zip_hash_changes_with_content(tmp_path: Path) -> None:
    root = _fake_repo(tmp_path / "repo", "import shared.config\n")
    first = package.build_all(root, tmp_path / "a")[0].sha256
    (root / "shared" / "config.py").write_text("VALUE = 2\n")
    assert package.build_all(root, tmp_path / "b")[0].sha256 != first


def test_removed_function_leaves_no_bundle(tmp_path: Path) -> None:
    root = _fake_repo(tmp_path / "repo", "import shared.config\n")
    out = tmp_path / "build"
    package.build_all(root, out)
    assert (out / "probe.zip").is_file()
    shutil.rmtree(root / "functions" / "probe")
    (root / "functions" / "other").mkdir()
    (root / "functions" / "other" / "main.py").write_text(
        PROBE_MAIN.format(imports="").replace("probe", "other")
    )
    package.build_all(root, out)
    assert not (out / "probe.zip").exists()
    assert not (out / "probe").exists()
    assert (out / "other.zip").is_file()


# Each bundle answers a real request of its kind, on the emulators.


@dataclass(frozen=True)
class World:
    """The emulators, seeded as a deployment would be: topics, a key ring, an API key."""

    env: dict[str, str]
    ring: KeyRing
    api_key: str
    tasks: Any  # the tasks collection, as process_task and task_status see it
    schedules: Any
    tasks_observer: str

    def env_for(self, name: str) -> dict[str, str]:
        """What Terraform gives `name`: the sealing functions hold the public ring only."""
        sealing_only = name in ("submit_task", "schedules", "webhooks", "workflows")
        ring = self.ring.public_only() if sealing_only else self.ring
        return {**self.env, "AIA_KEYRING": ring.to_json()}

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


@pytest.fixture(scope="module")
def world(emulator_env: dict[str, str]) -> World:
    from google.cloud import firestore

    from shared.security.apikeys import ApiKeys, FirestoreApiKeyStore

    reset_firestore(emulator_env["FIRESTORE_EMULATOR_HOST"], TEST_PROJECT)
    reset_pubsub(emulator_env["PUBSUB_EMULATOR_HOST"])
    topics = observed_topics(TEST_PROJECT, (TASKS_TOPIC, DEAD_LETTER_TOPIC))
    settings = load_settings(emulator_env)
    # API keys live in the database AIA_KEYS_DATABASE names; tasks in AIA_FIRESTORE_DATABASE.
    keys_db = firestore.Client(project=settings.project, database=settings.keys_database)
    _, api_key = ApiKeys(FirestoreApiKeyStore(keys_db)).create("bundle-check")
    tasks_db = firestore.Client(project=settings.project, database=settings.firestore_database)
    return World(
        env=dict(emulator_env),
        ring=generate_keyring(),
        api_key=api_key,
        tasks=tasks_db.collection(TASKS),
        schedules=tasks_db.collection(SCHEDULES),
        tasks_observer=topics[TASKS_TOPIC][1],
    )


@dataclass(frozen=True)
class Submitted:
    report: dict[str, Any]
    task_id: str
    published: Received


def serve(
    name: str,
    request: Request,
    world: World,
    bundles: dict[str, package.Bundle],
    venv: Path,
    directory: Path | None = None,
) -> dict[str, Any]:
    bundle = bundles[name]
    return probe(
        venv,
        directory or bundle.directory,
        name,
        bundle.signature_type,
        request,
        world.env_for(name),
    )


def submit_request(world: World) -> Request:
    return Request.post_json(
        "/tasks", {"type": "echo", "payload": {"from": "bundle"}}, world.auth()
    )


def push_request(message: Received) -> Request:
    """The body Pub/Sub's push subscription sends to process_task for `message`."""
    return Request.post_json(
        "/",
        {
            "subscription": f"projects/{TEST_PROJECT}/subscriptions/aia-tasks-worker",
            "message": {
                "data": base64.b64encode(message.data).decode(),
                "attributes": message.attributes,
                "messageId": message.message_id,
                "publishTime": "2026-01-01T00:00:00Z",
            },
        },
    )


@pytest.fixture(scope="module")
def submitted(world: World, bundles: dict[str, package.Bundle], runtime_venv: Path) -> Submitted:
    """One echo task, submitted through the submit_task bundle; what it published."""
    report = serve("submit_task", submit_request(world), world, bundles, runtime_venv)
    assert_serves(report, 202)
    task_id = json.loads(report["body"])["task_id"]
    messages = pull(world.tasks_observer, host=world.env["PUBSUB_EMULATOR_HOST"])
    assert [(m.json()["task_id"], m.json()["tenant_id"]) for m in messages] == [
        (task_id, "bundle-check")
    ]
    assert set(messages[0].json()["created"]) >= {"version", "data_key", "payload"}
    return Submitted(report, task_id, messages[0])


def test_every_function_has_a_serving_check() -> None:
    assert set(FUNCTIONS) == set(SERVING_CHECKS), "add a test_<name>_bundle_serves for it"


def test_health_bundle_serves(
    world: World, bundles: dict[str, package.Bundle], runtime_venv: Path
) -> None:
    # Readiness, not liveness: both Google clients are imported and used.
    report = assert_serves(serve("health", Request(path="/health"), world, bundles, runtime_venv))
    assert_health(json.loads(report["body"]), report["status"], status="ok")


def test_metrics_bundle_serves(
    world: World, bundles: dict[str, package.Bundle], runtime_venv: Path
) -> None:
    report = assert_serves(serve("metrics", Request(path="/metrics"), world, bundles, runtime_venv))
    assert report["content_type"] == CONTENT_TYPE_LATEST
    families = {f.name for f in text_string_to_metric_families(report["body"])}
    assert {"aia_tasks", "aia_tasks_submitted", "aia_task_duration_seconds"} <= families


def test_submit_task_bundle_serves(submitted: Submitted, world: World) -> None:
    answer = json.loads(submitted.report["body"])
    assert answer["status"] == "queued"
    assert "dispatch" not in answer  # published, not deferred
    stored = world.tasks.document(submitted.task_id).get()
    assert stored.exists
    assert stored.get("tenant_id") == "bundle-check"


def test_task_status_bundle_serves(
    submitted: Submitted, world: World, bundles: dict[str, package.Bundle], runtime_venv: Path
) -> None:
    request = Request(path=f"/tasks/{submitted.task_id}", headers=world.auth())
    view = json.loads(
        assert_serves(serve("task_status", request, world, bundles, runtime_venv))["body"]
    )
    assert view["task_id"] == submitted.task_id
    assert view["type"] == "echo"
    # Opening a result needs the private ring: read it once the worker has run.
    if view["status"] == "succeeded":
        assert view["result"] == {"from": "bundle"}
    else:
        assert view["status"] == "queued"


def test_process_task_bundle_serves(
    submitted: Submitted, world: World, bundles: dict[str, package.Bundle], runtime_venv: Path
) -> None:
    report = serve("process_task", push_request(submitted.published), world, bundles, runtime_venv)
    assert_serves(report, 200)
    stored = world.tasks.document(submitted.task_id).get()
    assert stored.get("status") == "succeeded"
    assert stored.get("attempts") == 1


def test_redispatch_bundle_serves(
    world: World, bundles: dict[str, package.Bundle], runtime_venv: Path
) -> None:
    report = assert_serves(serve("redispatch", Request("POST", "/"), world, bundles, runtime_venv))
    assert report["content_type"] == "application/json"
    swept = json.loads(report["body"])
    assert set(swept) == {"found", "published", "dead_lettered"}
    assert all(type(n) is int for n in swept.values())


@pytest.fixture(scope="module")
def schedule(world: World, bundles: dict[str, package.Bundle], runtime_venv: Path) -> str:
    """A schedule created through the schedules bundle (cron and time zones from its venv)."""
    body = {
        "cron": "30 2 * * *",
        "timezone": "Europe/Paris",
        "task": {"type": "echo", "payload": {"from": "schedule"}},
    }
    request = Request.post_json("/schedules", body, world.auth())
    report = assert_serves(serve("schedules", request, world, bundles, runtime_venv), 201)
    created = json.loads(report["body"])
    assert len(created["next_runs"]) == 5
    assert all(
        run.startswith(("20", "21")) and "T02:30:00+0" in run for run in created["next_runs"][1:]
    )
    return str(created["schedule_id"])


def test_schedules_bundle_serves(
    schedule: str, world: World, bundles: dict[str, package.Bundle], runtime_venv: Path
) -> None:
    request = Request(path=f"/schedules/{schedule}", headers=world.auth())
    view = json.loads(
        assert_serves(serve("schedules", request, world, bundles, runtime_venv))["body"]
    )
    assert view["schedule_id"] == schedule
    assert view["state"] == "active"


def test_schedule_tick_bundle_serves(
    schedule: str, world: World, bundles: dict[str, package.Bundle], runtime_venv: Path
) -> None:
    from datetime import UTC, datetime, timedelta

    # Its slot passed a minute ago: the tick opens the sealed payload and submits the task.
    past = datetime.now(UTC) - timedelta(minutes=1)
    world.schedules.document(schedule).update({"next_run_at": past, "due_at": past})
    report = assert_serves(
        serve("schedule_tick", Request("POST", "/"), world, bundles, runtime_venv)
    )
    assert report["content_type"] == "application/json"
    counts = json.loads(report["body"])
    assert (counts["ticks"], counts["slots_fired"]) == (1, 1)
    fired = world.schedules.document(schedule).get()
    task = world.tasks.document(fired.get("last_task_id")).get()
    assert (task.get("tenant_id"), task.get("type")) == ("bundle-check", "echo")


def test_openapi_bundle_serves(
    world: World, bundles: dict[str, package.Bundle], runtime_venv: Path
) -> None:
    request = Request(path="/openapi.json")
    report = assert_serves(serve("openapi", request, world, bundles, runtime_venv))
    assert report["content_type"] == "application/json"
    # The probe keeps the start of the body: the document begins with its version.
    assert report["body"].startswith('{"openapi":"3.1.0"'), report["body"][:200]


def test_dashboard_bundle_serves(
    world: World, bundles: dict[str, package.Bundle], runtime_venv: Path
) -> None:
    # The page and its files travel inside shared/dashboard/ in the bundle.
    for path, kind in (
        ("/dashboard", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/style.css", "text/css"),
    ):
        report = assert_serves(serve("dashboard", Request(path=path), world, bundles, runtime_venv))
        assert report["content_type"].startswith(kind), (path, report["content_type"])
        assert report["body"], path


def test_webhooks_bundle_serves(
    world: World, bundles: dict[str, package.Bundle], runtime_venv: Path
) -> None:
    # A public IP literal: the URL passes the egress rules without DNS.
    body = {"url": "https://93.184.216.34/hook", "events": ["task.succeeded"]}
    request = Request.post_json("/webhooks", body, world.auth())
    report = assert_serves(serve("webhooks", request, world, bundles, runtime_venv), 201)
    answer = json.loads(report["body"])
    assert answer["secret"].startswith("whsec_")
    assert answer["url"] == body["url"]


def test_deliver_webhooks_bundle_serves(
    world: World, bundles: dict[str, package.Bundle], runtime_venv: Path
) -> None:
    request = Request("POST", "/sweep")
    report = assert_serves(serve("deliver_webhooks", request, world, bundles, runtime_venv))
    swept = json.loads(report["body"])
    assert set(swept) == {"events", "deliveries", "caught_up"}
    assert all(type(n) is int for n in swept.values())


def test_usage_bundle_serves(
    world: World, bundles: dict[str, package.Bundle], runtime_venv: Path
) -> None:
    request = Request(path="/usage", headers=world.auth())
    report = assert_serves(serve("usage", request, world, bundles, runtime_venv))
    assert json.loads(report["body"]) == {
        "tenant_id": "bundle-check",
        "budgeted": False,
        "limits": {"rate": {}},
    }


def test_workflows_bundle_serves(
    world: World, bundles: dict[str, package.Bundle], runtime_venv: Path
) -> None:
    # Two nodes, one depending on the other: sealed, stored, the root published.
    body = {
        "nodes": {
            "a": {"type": "echo", "payload": {}},
            "b": {"type": "echo", "payload": {}, "depends_on": ["a"]},
        }
    }
    request = Request.post_json("/workflows", body, world.auth())
    report = assert_serves(serve("workflows", request, world, bundles, runtime_venv), 202)
    workflow_id = json.loads(report["body"])["workflow_id"]
    published = pull(world.tasks_observer, host=world.env["PUBSUB_EMULATOR_HOST"])
    # Other checks' messages may still wait on the observer: only this workflow's count.
    mine = [m for m in published if m.attributes.get("workflow_id") == workflow_id]
    assert len(mine) == 1
    read = Request(path=f"/workflows/{workflow_id}", headers=world.auth())
    view = json.loads(assert_serves(serve("workflows", read, world, bundles, runtime_venv))["body"])
    assert (view["status"], view["nodes"]["b"]["status"]) == ("running", "waiting")


SERVING_CHECKS = {
    name.removeprefix("test_").removesuffix("_bundle_serves")
    for name in dir()
    if name.startswith("test_") and name.endswith("_bundle_serves")
}


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("submit_task", "shared/tasks/submission.py"),
        ("process_task", "shared/security/crypto.py"),
    ],
)
def test_a_module_missing_from_a_bundle_fails_its_serving_check(
    name: str,
    module: str,
    world: World,
    submitted: Submitted,
    bundles: dict[str, package.Bundle],
    runtime_venv: Path,
    tmp_path: Path,
) -> None:
    # Both modules are imported lazily, on the first request: loading still works.
    broken = tmp_path / name
    shutil.copytree(bundles[name].directory, broken)
    (broken / module).unlink()
    request = submit_request(world) if name == "submit_task" else push_request(submitted.published)
    report = serve(name, request, world, bundles, runtime_venv, directory=broken)
    assert report["failed_imports_at_load"] == []
    dotted = module.removesuffix(".py").replace("/", ".")
    with pytest.raises(AssertionError, match=f"imports failed while serving: .*{dotted}"):
        assert_serves(report, 202 if name == "submit_task" else 200)


# The check itself, shown to fail on the two failure classes it exists for.

PROBE_MAIN = """\
import functions_framework
{imports}

@functions_framework.http
def probe(request):
    return "ok"
"""


def _fake_repo(root: Path, imports: str) -> Path:
    (root / "functions" / "probe").mkdir(parents=True)
    (root / "functions" / "probe" / "main.py").write_text(PROBE_MAIN.format(imports=imports))
    (root / "shared").mkdir()
    (root / "shared" / "__init__.py").write_text("")
    (root / "shared" / "config.py").write_text("VALUE = 1\n")
    shutil.copyfile(REPO_ROOT / "requirements.txt", root / "requirements.txt")
    return root


def test_probe_passes_a_good_bundle(tmp_path: Path, runtime_venv: Path) -> None:
    root = _fake_repo(tmp_path / "repo", "import shared.config\nimport pydantic")
    bundle = package.build_all(root, tmp_path / "build")[0]
    assert_serves(probe(runtime_venv, bundle.directory, "probe", "http"))


def test_probe_fails_without_shared(tmp_path: Path, runtime_venv: Path) -> None:
    root = _fake_repo(tmp_path / "repo", "import shared.config")
    bundle = package.build_all(root, tmp_path / "build")[0]
    shutil.rmtree(bundle.directory / "shared")
    report = probe(runtime_venv, bundle.directory, "probe", "http")
    with pytest.raises(AssertionError, match="No module named 'shared'"):
        assert_serves(report)


def test_probe_fails_on_import_missing_from_requirements(
    tmp_path: Path, runtime_venv: Path
) -> None:
    # hypothesis is a dev dependency: importable in .venv, absent from requirements.txt.
    root = _fake_repo(tmp_path / "repo", "import shared.config\nimport hypothesis")
    bundle = package.build_all(root, tmp_path / "build")[0]
    report = probe(runtime_venv, bundle.directory, "probe", "http")
    with pytest.raises(AssertionError, match="No module named 'hypothesis'"):
        assert_serves(report)


def test_probe_fails_on_lazy_import_missing_at_request_time(
    tmp_path: Path, runtime_venv: Path
) -> None:
    root = _fake_repo(tmp_path / "repo", "import shared.config")
    main_py = root / "functions" / "probe" / "main.py"
    main_py.write_text(
        main_py.read_text().replace('return "ok"', 'import hypothesis\n    return "ok"')
    )
    bundle = package.build_all(root, tmp_path / "build")[0]
    report = probe(runtime_venv, bundle.directory, "probe", "http")
    with pytest.raises(AssertionError, match="hypothesis"):
        assert_serves(report)


def test_probe_does_not_see_the_repository(runtime_venv: Path) -> None:
    # Run from the repo root with PYTHONPATH set: -I must still hide both.
    result = subprocess.run(
        [str(venv_python(runtime_venv)), "-I", "-c", "import shared"],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "No module named 'shared'" in result.stderr
