"""Parsed Terraform for the infra tests: one merged dict per module folder."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hcl2
from hcl2 import SerializationOptions

from tools.tfschema.venvs import REPO_ROOT

TERRAFORM = REPO_ROOT / "terraform"
MODULES = TERRAFORM / "modules"
# The one root module; an environment is its tfvars and backend config only.
DEPLOY = TERRAFORM / "deploy"
EXAMPLES = TERRAFORM / "examples"
ENVIRONMENTS = TERRAFORM / "environments"
ENV_NAMES = ("dev", "staging", "prod")
_OPTIONS = SerializationOptions(strip_string_quotes=True, explicit_blocks=False)
_REFERENCE = re.compile(r"\b(google_[a-z0-9_]+|module|local|var|data)\.([a-z0-9_]+)")


def parse_file(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        parsed: dict[str, Any] = hcl2.load(handle, serialization_options=_OPTIONS)
    return parsed


@dataclass(frozen=True)
class Module:
    path: Path
    files: dict[str, dict[str, Any]]

    def blocks(self, kind: str) -> Iterator[dict[str, Any]]:
        for parsed in self.files.values():
            yield from parsed.get(kind, [])

    @functools.cached_property
    def resources(self) -> dict[str, dict[str, dict[str, Any]]]:
        """type -> name -> body."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for block in self.blocks("resource"):
            for type_, named in block.items():
                for name, body in named.items():
                    out.setdefault(type_, {})[name] = body
        return out

    @functools.cached_property
    def data(self) -> dict[str, dict[str, dict[str, Any]]]:
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for block in self.blocks("data"):
            for type_, named in block.items():
                for name, body in named.items():
                    out.setdefault(type_, {})[name] = body
        return out

    @functools.cached_property
    def locals(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for block in self.blocks("locals"):
            out.update({k: v for k, v in block.items() if k != "__comments__"})
        return out

    @functools.cached_property
    def variables(self) -> dict[str, dict[str, Any]]:
        return {k: v for block in self.blocks("variable") for k, v in block.items()}

    @functools.cached_property
    def outputs(self) -> dict[str, dict[str, Any]]:
        return {k: v for block in self.blocks("output") for k, v in block.items()}

    @functools.cached_property
    def module_calls(self) -> dict[str, dict[str, Any]]:
        return {k: v for block in self.blocks("module") for k, v in block.items()}

    def text(self) -> str:
        return "\n".join(p.read_text(encoding="utf-8") for p in sorted(self.path.glob("*.tf")))

    def references(self) -> set[tuple[str, str]]:
        """Every `type.name` the module's expressions refer to (comments excluded)."""
        text = re.sub(r"(?m)^\s*#.*$", "", self.text())
        return set(_REFERENCE.findall(text))


@functools.cache
def load_module(path: Path) -> Module:
    files = {p.name: parse_file(p) for p in sorted(path.glob("*.tf"))}
    return Module(path, files)


def module_dirs() -> list[Path]:
    return sorted(p for p in MODULES.iterdir() if p.is_dir())


def root_dirs() -> list[Path]:
    """Folders Terraform runs in: the deploy root and each example."""
    return [DEPLOY, *sorted(p for p in EXAMPLES.iterdir() if p.is_dir())]


def tfvars(env: str) -> dict[str, Any]:
    values = parse_file(ENVIRONMENTS / env / "terraform.tfvars")
    return {k: v for k, v in values.items() if not k.startswith("__")}


def backend_config(env: str) -> dict[str, Any]:
    values = parse_file(ENVIRONMENTS / env / "backend.hcl")
    return {k: v for k, v in values.items() if not k.startswith("__")}


def unquote(value: Any) -> Any:
    """hcl2 keeps `${...}` around expressions; plain strings come back bare."""
    if isinstance(value, str) and value.startswith("${") and value.endswith("}"):
        return value[2:-1]
    return value
