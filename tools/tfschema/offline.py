"""Make `terraform` use the offline google provider: a CLI config with a dev override.

    python -m tools.tfschema.offline DIR    # prints the environment to export

Writes DIR/terraform-provider-google (a launcher for `provider.py` in its own
virtualenv) and DIR/terraformrc, whose `dev_overrides` point `hashicorp/google`
at DIR. With TF_CLI_CONFIG_FILE set to that file, `terraform validate`, `plan`
and `test` run against the real provider schema with no network. Modules are
installed with `terraform get` (init would ask the registry for the overridden
provider).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tools.tfschema.generate import SCHEMA_FILE
from tools.tfschema.venvs import ensure_venv, venv_python

HERE = Path(__file__).resolve().parent
PROVIDER = HERE / "provider.py"
REQUIREMENTS = HERE / "requirements.txt"


@dataclass(frozen=True)
class OfflineTerraform:
    terraform: str
    env: dict[str, str]

    def run(
        self, *args: str, cwd: Path, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.terraform, *args],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"terraform {' '.join(args)} failed in {cwd} ({result.returncode}):\n"
                f"{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
            )
        return result


def setup(directory: Path, *, schema: Path = SCHEMA_FILE) -> dict[str, str]:
    """Install the launcher and CLI config in `directory`; return the variables to set."""
    directory.mkdir(parents=True, exist_ok=True)
    venv = ensure_venv("tfprovider", REQUIREMENTS)
    launcher = directory / "terraform-provider-google"
    launcher.write_text(
        "#!/bin/sh\n"
        f"exec {shlex.quote(str(venv_python(venv)))} {shlex.quote(str(PROVIDER))} "
        f'{shlex.quote(str(schema.resolve()))} "$@"\n'
    )
    launcher.chmod(0o755)
    config = directory / "terraformrc"
    config.write_text(
        "provider_installation {\n"
        "  dev_overrides {\n"
        f'    "hashicorp/google" = "{directory.resolve()}"\n'
        "  }\n"
        "}\n"
    )
    return {
        "TF_CLI_CONFIG_FILE": str(config),
        "TF_IN_AUTOMATION": "1",
        "TF_INPUT": "0",
        "CHECKPOINT_DISABLE": "1",
    }


def offline_terraform(directory: Path) -> OfflineTerraform | None:
    """A runner for `terraform` with the offline provider, or None without terraform."""
    terraform = shutil.which("terraform")
    if terraform is None:
        return None
    env = {**os.environ, **setup(directory)}
    env.pop("TF_PLUGIN_CACHE_DIR", None)
    return OfflineTerraform(terraform, env)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.tfschema.offline", description=__doc__)
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    for key, value in setup(args.directory.resolve()).items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
