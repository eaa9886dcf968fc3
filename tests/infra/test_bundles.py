"""Deploy bundles: what is built is exactly what deploys, and it imports on its own.

Each bundle is loaded by a fresh `python -I` in a virtualenv made from the bundle's
requirements.txt only, with the bundle as working directory: the seed's
`ModuleNotFoundError` on deploy fails here instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tools import package
from tools.tfschema.venvs import REPO_ROOT, ensure_venv, venv_python

pytestmark = pytest.mark.infra

PROBE = (Path(__file__).parent / "bundle_probe.py").read_text(encoding="utf-8")
FUNCTIONS = package.discover_functions(REPO_ROOT)
# What a request may leave missing without failing: nothing yet. An entry here
# needs a reason (an optional accelerator tried inside try/except, say).
OPTIONAL_IMPORTS: frozenset[str] = frozenset()


@pytest.fixture(scope="session")
def runtime_venv() -> Path:
    """A virtualenv with the runtime requirements only (what Cloud Functions installs)."""
    return ensure_venv("bundle", REPO_ROOT / "requirements.txt")


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, package.Bundle]:
    out = tmp_path_factory.mktemp("build")
    return {b.name: b for b in package.build_all(REPO_ROOT, out)}


def probe(venv: Path, bundle_dir: Path, target: str, signature_type: str) -> dict[str, Any]:
    home = bundle_dir.parent / ".home"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(home),  # no gcloud credentials from the developer's home
        "GOOGLE_CLOUD_PROJECT": "aia-bundle-check",
        # Never look for the GCE metadata server: clients fail fast without credentials.
        "NO_GCE_CHECK": "True",
        "GCE_METADATA_HOST": "127.0.0.1:9",
        "GCE_METADATA_IP": "127.0.0.1:9",
        "AIA_LOG_LEVEL": "ERROR",
    }
    result = subprocess.run(
        [str(venv_python(venv)), "-I", "-c", PROBE, target, signature_type],
        cwd=bundle_dir,
        env=env,
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


def assert_serves(report: dict[str, Any]) -> None:
    assert report["stage"] == "served", (
        f"{report['target']} failed to {report['stage']}: {report.get('error')}\n{report['stderr']}"
    )
    missing = [m for m in report["failed_imports"] if m.split(".")[0] not in OPTIONAL_IMPORTS]
    assert not missing, f"{report['target']}: imports failed while serving: {missing}"
    assert 100 <= report["status"] < 600


def test_functions_discovered() -> None:
    assert FUNCTIONS, "no functions/<name>/main.py: nothing would deploy"


@pytest.mark.parametrize("name", FUNCTIONS)
def test_bundle_has_exactly_main_shared_requirements(
    name: str, bundles: dict[str, package.Bundle]
) -> None:
    bundle = bundles[name]
    top = sorted(p.name for p in bundle.directory.iterdir())
    assert top == ["main.py", "requirements.txt", "shared"]
    names = zipfile.ZipFile(bundle.zip_path).namelist()
    assert names == sorted(names)
    assert {n.split("/")[0] for n in names} == {"main.py", "requirements.txt", "shared"}
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or "/tests/" in n]
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


@pytest.mark.parametrize("name", FUNCTIONS)
def test_bundle_loads_and_serves_in_isolation(
    name: str, bundles: dict[str, package.Bundle], runtime_venv: Path
) -> None:
    bundle = bundles[name]
    report = probe(runtime_venv, bundle.directory, name, bundle.signature_type)
    assert_serves(report)
    if name == "health":
        assert report["status"] == 200, report["body"]


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
