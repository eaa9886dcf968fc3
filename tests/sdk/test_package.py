"""The SDK stands alone: it never imports the server's code and ships its type information."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

SDK = Path(__file__).resolve().parents[2] / "sdk"
PACKAGE = SDK / "src" / "aia_client"
SERVER_PACKAGES = {"shared", "functions", "devtools", "tests"}


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_module_imports_the_server() -> None:
    modules = sorted(PACKAGE.glob("*.py"))
    assert modules
    for module in modules:
        assert not imported_roots(module) & SERVER_PACKAGES, module.name


def test_it_imports_with_only_its_own_folder_on_the_path() -> None:
    # -I drops the checkout and PYTHONPATH: `shared` is not importable at all here.
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import aia_client, aia_client.cli, aia_client.client;"
        "assert aia_client.__file__.startswith(sys.argv[1]), aia_client.__file__;"
        "assert not {'shared', 'devtools'} & set(sys.modules), sorted(sys.modules);"
        "print(aia_client.__version__)"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", probe, str(SDK / "src")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    project = tomllib.loads((SDK / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert done.stdout.strip() == project["version"]


def test_the_distribution_ships_py_typed_and_the_console_script() -> None:
    config = tomllib.loads((SDK / "pyproject.toml").read_text(encoding="utf-8"))
    assert (PACKAGE / "py.typed").is_file()
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["aia_client"]
    assert config["project"]["scripts"]["aia-client"] == "aia_client.cli:run"
    dependencies = config["project"]["dependencies"]
    assert [d.split(">")[0] for d in dependencies] == ["httpx"]
