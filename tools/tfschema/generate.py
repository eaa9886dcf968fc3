"""Regenerate `google.schema.json`: the google provider's schema for the types we use.

    python -m tools.tfschema.generate            # types found in terraform/**/*.tf
    python -m tools.tfschema.generate --check    # exit 1 if the committed file is stale

The Terraform registry is out of reach here, but the PyPI wheel
`cdktn-provider-google` is generated from the provider's own schema and carries
it in its bundled JavaScript: every attribute is annotated
`// name - computed: X, optional: Y, required: Z`, and each block's
`*ToHclTerraform` lists which fields are nested blocks, as list, set or single,
with their value types. This module reads those back into the JSON format of
`terraform providers schema -json`, for the resource and data source types that
`terraform/` declares, and writes them with the provider version they came from.
"""

from __future__ import annotations

import argparse
import fcntl
import io
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.tfschema.venvs import REPO_ROOT

WHEEL = "cdktn-provider-google"
WHEEL_VERSION = "21.1.0"
SCHEMA_FILE = Path(__file__).with_name("google.schema.json")
TERRAFORM_DIR = REPO_ROOT / "terraform"
# Git-ignored and dropped by `make clean`, like the tool virtualenvs.
CACHE_DIR = REPO_ROOT / ".venv-wheels"

_TYPE_RE = re.compile(r'^\s*(resource|data)\s+"(google_[a-z0-9_]+)"', re.MULTILINE)
_CLASS_RE = re.compile(r"^class (\w+) extends ([\w.]+) \{\n(.*?)^\}", re.MULTILINE | re.DOTALL)
_HCL_FN_RE = re.compile(
    r"^function (\w+)ToHclTerraform\(struct\) \{\n(.*?)^\}", re.MULTILINE | re.DOTALL
)
_HCL_ENTRY_RE = re.compile(
    r"(\w+): \{\s*value: [^\n]*\n\s*isBlock: (true|false),\s*"
    r'type: "(\w+)",\s*storageClassType: "(\w+)",'
)
_FLAGS_RE = re.compile(
    r"// (\w+) - computed: (true|false), optional: (true|false), required: (true|false)\n"
    r"(.*?)(?=\n    // \w+ - computed:|\Z)",
    re.DOTALL,
)
_GETTER_RE = re.compile(r"get (\w+)\(\) \{\s*return (.*?);\s*\}", re.DOTALL)
_FIELD_INIT_RE = re.compile(r'(_\w+) = new ([\w.]+)\(this, "(\w+)"(?:, (true|false))?\)')
_MODULE_REF_RE = re.compile(r"\b(?:index|structs\d+)_\d+\.")
_VERSION_RE = re.compile(r"providerVersion: '([0-9.]+)'")

_SCALARS = {"string": "string", "number": "number", "boolean": "bool"}
_GETTERS: dict[str, Any] = {
    "getStringAttribute": "string",
    "getNumberAttribute": "number",
    "getBooleanAttribute": "bool",
    "getListAttribute": ["list", "string"],
    "getNumberListAttribute": ["list", "number"],
    "getStringMapAttribute": ["map", "string"],
    "getNumberMapAttribute": ["map", "number"],
    "getBooleanMapAttribute": ["map", "bool"],
    "getAnyMapAttribute": ["map", "dynamic"],
}
_SPECIAL_CLASSES: dict[str, Any] = {
    "cdktn.StringMap": ["map", "string"],
    "cdktn.NumberMap": ["map", "number"],
    "cdktn.BooleanMap": ["map", "bool"],
    "cdktn.AnyMap": ["map", "dynamic"],
    "cdktn.StringMapList": ["list", ["map", "string"]],
    "cdktn.NumberMapList": ["list", ["map", "number"]],
    "cdktn.BooleanMapList": ["list", ["map", "bool"]],
    "cdktn.AnyMapList": ["list", ["map", "dynamic"]],
}


class SchemaError(Exception):
    """The generated JavaScript did not have the shape this reader expects."""


@dataclass
class Member:
    name: str
    computed: bool
    optional: bool
    required: bool
    getter: str


@dataclass
class JsModule:
    """One `lib/<type>/index.js` of the cdktn package, split into what we read."""

    classes: dict[str, str] = field(default_factory=dict)
    hcl_functions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, source: str) -> JsModule:
        module = cls()
        for match in _CLASS_RE.finditer(source):
            module.classes[match.group(1)] = match.group(3)
        for match in _HCL_FN_RE.finditer(source):
            module.hcl_functions[match.group(1)] = match.group(2)
        return module


def _members(body: str) -> list[Member]:
    members = []
    for match in _FLAGS_RE.finditer(body):
        name, computed, optional, required, rest = match.groups()
        getter = _GETTER_RE.search(rest)
        members.append(
            Member(
                name,
                computed == "true",
                optional == "true",
                required == "true",
                getter.group(2).strip() if getter else "",
            )
        )
    return members


def _hcl_entries(body: str) -> dict[str, tuple[bool, str, str]]:
    return {
        m.group(1): (m.group(2) == "true", m.group(3), m.group(4))
        for m in _HCL_ENTRY_RE.finditer(body)
    }


def _lower_first(name: str) -> str:
    return name[0].lower() + name[1:]


class BlockReader:
    def __init__(self, module: JsModule, type_name: str) -> None:
        self.module = module
        self.type_name = type_name
        self.field_inits: dict[str, dict[str, tuple[str, str, bool]]] = {}

    def _inits(self, class_name: str) -> dict[str, tuple[str, str, bool]]:
        """Terraform name -> (field, class, wraps a set) for the complex members of a class."""
        if class_name not in self.field_inits:
            body = self.module.classes[class_name]
            self.field_inits[class_name] = {
                m.group(3): (m.group(1), m.group(2), m.group(4) == "true")
                for m in _FIELD_INIT_RE.finditer(body)
            }
        return self.field_inits[class_name]

    def _item_class(self, class_name: str) -> str:
        if class_name.endswith("OutputReference"):
            return class_name
        if class_name.endswith("List"):
            return class_name[: -len("List")] + "OutputReference"
        if class_name.endswith("Map"):
            return class_name[: -len("Map")] + "OutputReference"
        raise SchemaError(f"{self.type_name}: unexpected complex class {class_name}")

    def _object_type(self, class_name: str) -> list[Any]:
        """A computed (or attribute-style) nested object, as a cty object type."""
        item = self._item_class(class_name)
        block = self.block(item, hcl=None)
        attrs = {name: spec["type"] for name, spec in block["attributes"].items()}
        for name, nested in block.get("block_types", {}).items():
            inner = ["object", {n: s["type"] for n, s in nested["block"]["attributes"].items()}]
            attrs[name] = [
                nested["nesting_mode"] if nested["nesting_mode"] != "single" else "list",
                inner,
            ]
        return ["object", attrs]

    def _computed_type(self, class_name: str, member: Member) -> Any:
        getter = member.getter
        call = re.search(r"this\.(get\w+Attribute)\('(\w+)'\)", getter)
        if call:
            kind = _GETTERS.get(call.group(1))
            if kind is None:
                raise SchemaError(f"{self.type_name}.{member.name}: unknown getter {getter}")
            if "Fn.tolist(" in getter and isinstance(kind, list) and kind[0] == "list":
                return ["set", kind[1]]
            return kind
        ref = re.fullmatch(r"this\.(_\w+)", getter)
        inits = self._inits(class_name)
        if ref and member.name in inits:
            _, complex_class, wraps_set = inits[member.name]
            if complex_class in _SPECIAL_CLASSES:
                return _SPECIAL_CLASSES[complex_class]
            obj = self._object_type(complex_class)
            if complex_class.endswith("Map"):
                return ["map", obj]
            return ["set" if wraps_set else "list", obj]
        raise SchemaError(f"{self.type_name}.{member.name}: cannot type getter {getter!r}")

    def block(
        self, class_name: str, hcl: dict[str, tuple[bool, str, str]] | None
    ) -> dict[str, Any]:
        body = self.module.classes.get(class_name)
        if body is None:
            raise SchemaError(f"{self.type_name}: class {class_name} not found")
        if hcl is None:
            struct = class_name.removesuffix("OutputReference")
            fn_body = self.module.hcl_functions.get(_lower_first(struct))
            hcl = _hcl_entries(fn_body) if fn_body is not None else {}
        attributes: dict[str, Any] = {}
        block_types: dict[str, Any] = {}
        for member in _members(body):
            entry = hcl.get(member.name)
            if entry is not None and entry[0]:
                block_types[member.name] = self._nested_block(class_name, member, entry[1])
                continue
            spec: dict[str, Any] = {"type": self._attribute_type(class_name, member, entry)}
            for flag in ("required", "optional", "computed"):
                if getattr(member, flag):
                    spec[flag] = True
            attributes[member.name] = spec
        result: dict[str, Any] = {"attributes": dict(sorted(attributes.items()))}
        if block_types:
            result["block_types"] = dict(sorted(block_types.items()))
        return result

    def _attribute_type(
        self, class_name: str, member: Member, entry: tuple[bool, str, str] | None
    ) -> Any:
        if entry is None:
            return self._computed_type(class_name, member)
        _, kind, storage = entry
        if kind == "simple":
            return _SCALARS[storage]
        for suffix, element in (("List", None), ("Map", None)):
            del element
            if storage.endswith(suffix) and storage[: -len(suffix)] in _SCALARS:
                scalar = _SCALARS[storage[: -len(suffix)]]
                return [kind if suffix == "List" else "map", scalar]
        # An attribute-style nested object (rare in SDKv2): type it from its class.
        return self._computed_type(class_name, member)

    def _nested_block(self, class_name: str, member: Member, kind: str) -> dict[str, Any]:
        inits = self._inits(class_name)
        if member.name not in inits:
            raise SchemaError(f"{self.type_name}.{member.name}: block without an output class")
        _, complex_class, _ = inits[member.name]
        item = self._item_class(complex_class)
        nested: dict[str, Any] = {
            "nesting_mode": {"list": "list", "set": "set", "struct": "single"}[kind],
            "block": self.block(item, hcl=None),
        }
        if kind == "list" and complex_class.endswith("OutputReference"):
            nested["max_items"] = 1
        if member.required:
            nested["min_items"] = 1
        return nested


def read_type(source: str, type_name: str, *, data: bool) -> dict[str, Any]:
    module = JsModule.parse(source)
    base = "cdktn.TerraformDataSource" if data else "cdktn.TerraformResource"
    top = [
        name for name, body in module.classes.items() if f'tfResourceType = "{type_name}"' in body
    ]
    if len(top) != 1:
        raise SchemaError(f"{type_name}: expected one {base} class, found {top}")
    body = module.classes[top[0]]
    synth = re.search(r"synthesizeHclAttributes\(\) \{(.*?)\n    \}", body, re.DOTALL)
    hcl = _hcl_entries(synth.group(1)) if synth else {}
    return {"version": 0, "block": BlockReader(module, type_name).block(top[0], hcl)}


def read_provider(source: str) -> dict[str, Any]:
    module = JsModule.parse(source)
    top = next(name for name, body in module.classes.items() if "tfResourceType" in body)
    body = module.classes[top]
    synth = re.search(r"synthesizeHclAttributes\(\) \{(.*?)\n    \}", body, re.DOTALL)
    if synth is None:
        raise SchemaError("provider: no synthesizeHclAttributes")
    attributes: dict[str, Any] = {}
    block_types: dict[str, Any] = {}
    reader = BlockReader(module, "provider")
    for name, (is_block, kind, storage) in _hcl_entries(synth.group(1)).items():
        if name == "alias":
            continue  # a meta-argument, not part of the provider's schema
        if is_block:
            item = storage.removesuffix("List").removesuffix("Struct")
            nested_class = item if item in module.classes else item + "OutputReference"
            block: dict[str, Any]
            if nested_class in module.classes:
                block = reader.block(nested_class, hcl=None)
            else:
                fn_body = module.hcl_functions.get(_lower_first(item), "")
                block = {
                    "attributes": {
                        n: {"type": _SCALARS.get(s, "string"), "optional": True}
                        for n, (_, _, s) in _hcl_entries(fn_body).items()
                    }
                }
            block_types[name] = {"nesting_mode": "list", "block": block, "max_items": 1}
        elif kind == "simple":
            attributes[name] = {"type": _SCALARS[storage], "optional": True}
        else:
            scalar = _SCALARS[storage.removesuffix("List").removesuffix("Map")]
            attributes[name] = {
                "type": [kind if kind != "map" else "map", scalar],
                "optional": True,
            }
    block_out: dict[str, Any] = {"attributes": dict(sorted(attributes.items()))}
    if block_types:
        block_out["block_types"] = dict(sorted(block_types.items()))
    return {"version": 0, "block": block_out}


def used_types(terraform_dir: Path = TERRAFORM_DIR) -> tuple[list[str], list[str]]:
    """(resource types, data source types) declared anywhere under `terraform/`."""
    resources: set[str] = set()
    data: set[str] = set()
    for path in sorted(terraform_dir.rglob("*.tf")):
        if ".terraform" in path.parts:
            continue
        for kind, name in _TYPE_RE.findall(path.read_text(encoding="utf-8")):
            (data if kind == "data" else resources).add(name)
    return sorted(resources), sorted(data)


def _lib_dir(type_name: str, *, data: bool) -> str:
    stem = type_name.removeprefix("google_").replace("_", "-")
    return f"package/lib/{'data-google-' if data else ''}{stem}/index.js"


def fetch_wheel(cache: Path = CACHE_DIR) -> Path:
    """The pinned wheel from the cache, downloaded once with pip (no install, ~67 MB)."""
    pattern = f"cdktn_provider_google-{WHEEL_VERSION}-*.whl"
    found = sorted(cache.glob(pattern))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    # Parallel test sessions share the cache: one downloads, the others wait,
    # and the wheel appears under its name only once complete.
    with (cache / ".download.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = sorted(cache.glob(pattern))
        if not found:
            with tempfile.TemporaryDirectory(dir=cache) as partial:
                subprocess.run(
                    [
                        *(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"),
                        *("--disable-pip-version-check", "--dest", partial),
                        f"{WHEEL}=={WHEEL_VERSION}",
                    ],
                    check=True,
                )
                for wheel in Path(partial).glob(pattern):
                    wheel.replace(cache / wheel.name)
            found = sorted(cache.glob(pattern))
    if not found:
        raise SchemaError(f"pip did not leave {pattern} in {cache}")
    return found[0]


def read_sources(wheel: Path, members: Iterable[str]) -> dict[str, str]:
    """`lib/<type>/index.js` -> its JavaScript, with the split-out `index-structs/*.js`."""
    wanted = {m.removesuffix("index.js"): m for m in members}
    with zipfile.ZipFile(wheel) as archive:
        tgz_name = next(n for n in archive.namelist() if n.endswith(".jsii.tgz"))
        tgz = archive.read(tgz_name)
    parts: dict[str, list[tuple[str, str]]] = {}
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        for info in tar:
            folder = info.name.rsplit("/", 1)[0] + "/"
            folder = folder.removesuffix("index-structs/")
            if folder in wanted and info.name.endswith(".js"):
                extracted = tar.extractfile(info)
                if extracted is not None:
                    parts.setdefault(wanted[folder], []).append(
                        (info.name, extracted.read().decode("utf-8"))
                    )
    sources = {
        member: _MODULE_REF_RE.sub("", "\n".join(text for _, text in sorted(chunks)))
        for member, chunks in parts.items()
    }
    missing = set(wanted.values()) - set(sources)
    if missing:
        raise SchemaError(f"not in {wheel.name}: {sorted(missing)}")
    return sources


def generate(resources: Sequence[str], data_sources: Sequence[str], wheel: Path) -> dict[str, Any]:
    paths = {("resource", t): _lib_dir(t, data=False) for t in resources}
    paths |= {("data", t): _lib_dir(t, data=True) for t in data_sources}
    provider_path = "package/lib/provider/index.js"
    sources = read_sources(wheel, [*paths.values(), provider_path])
    versions = set(_VERSION_RE.findall(sources[provider_path]))
    if len(versions) != 1:
        raise SchemaError(f"cannot tell the provider version: {versions}")
    schema: dict[str, Any] = {
        "format_version": "1.0",
        "generated_from": f"{WHEEL} {WHEEL_VERSION}",
        "provider_version": versions.pop(),
        "regenerate": "python -m tools.tfschema.generate",
        "provider": read_provider(sources[provider_path]),
        "resource_schemas": {},
        "data_source_schemas": {},
    }
    for (kind, type_name), path in sorted(paths.items()):
        key = "data_source_schemas" if kind == "data" else "resource_schemas"
        schema[key][type_name] = read_type(sources[path], type_name, data=kind == "data")
    return schema


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=1, sort_keys=True) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.tfschema.generate", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed file is stale")
    parser.add_argument("--wheel", type=Path, help="a local cdktn-provider-google wheel")
    parser.add_argument("--out", type=Path, default=SCHEMA_FILE)
    args = parser.parse_args(argv)
    resources, data_sources = used_types()
    wheel = args.wheel or fetch_wheel()
    text = render(generate(resources, data_sources, wheel))
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is stale: run python -m tools.tfschema.generate", file=sys.stderr)
            return 1
        return 0
    with tempfile.NamedTemporaryFile("w", dir=args.out.parent, delete=False) as tmp:
        tmp.write(text)
    Path(tmp.name).chmod(0o644)
    Path(tmp.name).replace(args.out)
    print(f"wrote {args.out}: {len(resources)} resource and {len(data_sources)} data source types")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
