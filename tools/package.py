"""Build one deploy bundle per function: `build/<name>/` and a reproducible `build/<name>.zip`.

A bundle is exactly what Cloud Functions receives: the function's `main.py`, the
`shared/` package and the team's `tasks/` package if there is one (no tests, no
caches of the working tree), their bytecode for the runtime, and the pinned
`requirements.txt`. The zip has fixed timestamps, permissions and entry order, so
the same sources give byte-identical archives and Terraform, which names the
uploaded object by the zip's SHA-256, redeploys only the functions whose bundle
changed.

The bytecode is there for the cold start: the runtime installs the dependencies
compiled, but our own modules would be compiled from source on every cold start
(the deployed source folder is read-only, so the result is never kept), about
150 ms for `submit_task`. It is `unchecked-hash` bytecode: a zip keeps no mtimes
to check against, and a bundle's sources never change after it is built. It is
compiled only when this interpreter is the runtime's version (its `.pyc` names
carry that version; another version would ignore them).

    python -m tools.package [--root .] [--out build] [--runtime python311] [NAME ...]
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.util
import json
import py_compile
import shutil
import sys
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SignatureType = Literal["http", "cloudevent"]

SHARED_PACKAGE = "shared"
# The team's own task types (optional): bundled beside shared/ so both find them.
TASKS_PACKAGE = "tasks"
REQUIREMENTS = "requirements.txt"
MANIFEST = "manifest.json"
# The Cloud Functions runtime the bytecode is for (terraform/modules/cloud_function's default).
DEFAULT_RUNTIME = "python311"
# 1980-01-01, the earliest time a zip entry can carry.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_EXCLUDED_DIRS = frozenset({"__pycache__", "tests", "test", ".pytest_cache", ".mypy_cache"})
_EXCLUDED_SUFFIXES = (".pyc", ".pyo")


class PackagingError(Exception):
    """The sources cannot be turned into a bundle."""


@dataclass(frozen=True)
class Bundle:
    name: str
    directory: Path
    zip_path: Path
    sha256: str
    signature_type: SignatureType

    def manifest_entry(self) -> dict[str, str]:
        return {
            "zip": self.zip_path.name,
            "sha256": self.sha256,
            "signature_type": self.signature_type,
        }


def discover_functions(root: Path) -> list[str]:
    """Every `functions/<name>/main.py`, sorted; the folder name is the function name."""
    functions_dir = root / "functions"
    if not functions_dir.is_dir():
        return []
    return sorted(p.parent.name for p in functions_dir.glob("*/main.py"))


def signature_type(main_py: Path, target: str) -> SignatureType:
    """`cloudevent` if `target` is decorated with `functions_framework.cloud_event`."""
    tree = ast.parse(main_py.read_text(encoding="utf-8"), filename=str(main_py))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == target:
            for decorator in node.decorator_list:
                name = ast.unparse(decorator)
                if name.endswith("cloud_event"):
                    return "cloudevent"
            return "http"
    raise PackagingError(f"{main_py}: no top-level function named {target!r} (the entry point)")


def _is_bundled(relative: Path) -> bool:
    if any(part in _EXCLUDED_DIRS for part in relative.parts[:-1]):
        return False
    name = relative.name
    if name.startswith(("test_", ".")) or name == "conftest.py":
        return False
    return not name.endswith(_EXCLUDED_SUFFIXES)


def bundle_files(root: Path, name: str) -> dict[str, Path]:
    """Archive name -> source file for one function's bundle."""
    main_py = root / "functions" / name / "main.py"
    if not main_py.is_file():
        raise PackagingError(f"functions/{name}/main.py does not exist")
    requirements = root / REQUIREMENTS
    if not requirements.is_file():
        raise PackagingError(f"{REQUIREMENTS} does not exist at {root}")
    shared = root / SHARED_PACKAGE
    if not (shared / "__init__.py").is_file():
        raise PackagingError(f"{SHARED_PACKAGE}/__init__.py does not exist at {root}")

    files = {"main.py": main_py, REQUIREMENTS: requirements}
    packages = [shared]
    if (root / TASKS_PACKAGE / "__init__.py").is_file():
        packages.append(root / TASKS_PACKAGE)
    for package in packages:
        for path in sorted(package.rglob("*")):
            relative = path.relative_to(root)
            if path.is_file() and _is_bundled(relative.relative_to(package.name)):
                files[relative.as_posix()] = path
    return files


def write_zip(files: dict[str, Path], destination: Path) -> str:
    """Write a deterministic zip; return its SHA-256 hex digest."""
    tmp = destination.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w") as archive:
        for arcname in sorted(files):
            info = zipfile.ZipInfo(arcname, date_time=ZIP_EPOCH)
            # Stored, not deflated: zlib's output may differ between builds of zlib,
            # and the bundles are small.
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o100644 << 16
            info.create_system = 3  # Unix, whatever machine builds it
            archive.writestr(info, files[arcname].read_bytes())
    tmp.replace(destination)
    return hashlib.sha256(destination.read_bytes()).hexdigest()


def bytecode_tag(runtime: str) -> str:
    """The `.pyc` tag a runtime loads: `python311` -> `cpython-311`."""
    version = runtime.removeprefix("python")
    if runtime == version or not version.isdigit():
        raise PackagingError(f"runtime {runtime!r} is not a Python runtime such as python311")
    return f"cpython-{version}"


def can_compile_for(runtime: str) -> bool:
    """Whether this interpreter writes the bytecode `runtime` loads."""
    return sys.implementation.cache_tag == bytecode_tag(runtime)


def compile_bytecode(directory: Path, modules: Iterable[str]) -> dict[str, Path]:
    """Compile each bundled `.py` (archive name) under `directory`; archive name -> `.pyc`."""
    compiled: dict[str, Path] = {}
    for arcname in modules:
        cached = Path(importlib.util.cache_from_source(arcname)).as_posix()
        try:
            py_compile.compile(
                str(directory / arcname),
                cfile=str(directory / cached),
                # The archive name, not this machine's path, so builds are byte-identical.
                dfile=arcname,
                doraise=True,
                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
            )
        except py_compile.PyCompileError as exc:
            raise PackagingError(f"{arcname} does not compile: {exc.msg}") from exc
        compiled[cached] = directory / cached
    return compiled


def build_bundle(root: Path, out: Path, name: str, *, bytecode: bool = True) -> Bundle:
    files = bundle_files(root, name)
    directory = out / name
    if directory.exists():
        shutil.rmtree(directory)
    for arcname, source in files.items():
        target = directory / arcname
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    if bytecode:
        files |= compile_bytecode(directory, [a for a in files if a.endswith(".py")])
    sha256 = write_zip(files, out / f"{name}.zip")
    return Bundle(
        name=name,
        directory=directory,
        zip_path=out / f"{name}.zip",
        sha256=sha256,
        signature_type=signature_type(files["main.py"], name),
    )


def _remove_stale(out: Path, keep: set[str]) -> None:
    """Drop bundles of functions that no longer exist (named by the previous manifest)."""
    manifest = out / MANIFEST
    if not manifest.is_file():
        return
    for name in set(json.loads(manifest.read_text())) - keep:
        (out / f"{name}.zip").unlink(missing_ok=True)
        if (out / name / "main.py").is_file():
            shutil.rmtree(out / name)


def build_all(
    root: Path,
    out: Path,
    names: Iterable[str] | None = None,
    *,
    runtime: str = DEFAULT_RUNTIME,
) -> list[Bundle]:
    """Build the named bundles (default: every function) and write `manifest.json`."""
    selected = list(names) if names else discover_functions(root)
    bytecode = can_compile_for(runtime)
    if not bytecode:
        print(
            f"package: this is {sys.implementation.cache_tag}, not {bytecode_tag(runtime)}:"
            f" bundles carry no bytecode, so each cold start on {runtime} compiles them",
            file=sys.stderr,
        )
    out.mkdir(parents=True, exist_ok=True)
    if not names:
        _remove_stale(out, set(selected))
    bundles = [build_bundle(root, out, name, bytecode=bytecode) for name in selected]
    manifest = {b.name: b.manifest_entry() for b in bundles}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return bundles


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.package", description=__doc__)
    parser.add_argument("--root", type=Path, default=Path("."), help="repository root")
    parser.add_argument("--out", type=Path, default=None, help="output folder (ROOT/build)")
    parser.add_argument(
        "--runtime", default=DEFAULT_RUNTIME, help="Cloud Functions runtime the bytecode is for"
    )
    parser.add_argument("names", nargs="*", help="functions to build (default: all)")
    args = parser.parse_args(argv)
    root: Path = args.root.resolve()
    out: Path = (args.out or root / "build").resolve()
    try:
        bundles = build_all(root, out, args.names, runtime=args.runtime)
    except PackagingError as exc:
        print(f"package: {exc}", file=sys.stderr)
        return 1
    if not bundles:
        print("package: no functions/<name>/main.py found", file=sys.stderr)
        return 1
    for bundle in bundles:
        print(f"{bundle.zip_path.relative_to(out.parent)}  {bundle.sha256[:12]}  {bundle.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
