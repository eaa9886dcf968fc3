"""Virtualenvs made on demand from a pinned requirements file, cached by its hash.

Tools whose dependencies clash with the project's (checkov's `hcl2`, the offline
provider's protobuf 5) and the bundle check (a venv holding only the runtime
requirements) each get their own `.venv-<purpose>-<hash>/` at the repository root;
`.venv-*/` is git-ignored. Everything installs from the repository's own files.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
_READY = ".aia-ready"


def requirements_hash(*files: Path) -> str:
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(purpose: str, requirements: Path, *, root: Path = REPO_ROOT) -> Path:
    """Return `.venv-<purpose>-<hash>/`, creating it from `requirements` if needed."""
    key = requirements_hash(requirements)
    venv = root / f".venv-{purpose}-{key}"
    ready = venv / _READY
    if ready.is_file():
        return venv
    locks = root / ".venv-locks"
    locks.mkdir(exist_ok=True)
    with (locks / f"{purpose}-{key}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready.is_file():
            return venv
        if venv.exists():
            shutil.rmtree(venv)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [
                str(venv_python(venv)),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
                str(requirements),
            ],
            check=True,
        )
        ready.write_text(key + "\n")
    return venv
