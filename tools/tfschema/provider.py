"""An offline stand-in for the google provider: its real schema, no API calls.

Run by Terraform (through the dev override that `tools.tfschema.offline` writes)
in its own virtualenv, which has the `tf` package (the Terraform plugin protocol
in Python). It serves `google.schema.json`, so `terraform validate` and `terraform
test` check every argument, block, type and reference against the real provider's
schema. Plans keep the configured values and leave computed ones unknown, as
the real provider does at create time; data sources and applies fill computed
values with placeholders. Nothing here knows any Google API: enum values and
server-side rules are not checked (the consistency tests cover what they can).

    python provider.py SCHEMA_JSON   (started by Terraform, never by hand)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, ClassVar

import tf.provider
from tf.gen import tfplugin_pb2 as pb
from tf.gen import tfplugin_pb2_grpc as rpc
from tf.runner import run_provider
from tf.types import Unknown
from tf.utils import read_dynamic_value, to_dynamic_value

Block = dict[str, Any]
_NESTING = {
    "single": pb.Schema.NestedBlock.NestingMode.SINGLE,
    "list": pb.Schema.NestedBlock.NestingMode.LIST,
    "set": pb.Schema.NestedBlock.NestingMode.SET,
    "map": pb.Schema.NestedBlock.NestingMode.MAP,
}


def block_to_pb(block: Block) -> Any:
    attributes = [
        pb.Schema.Attribute(
            name=name,
            type=json.dumps(spec["type"]).encode(),
            required=spec.get("required", False),
            optional=spec.get("optional", False),
            computed=spec.get("computed", False),
            sensitive=spec.get("sensitive", False),
        )
        for name, spec in sorted(block.get("attributes", {}).items())
    ]
    nested = [
        pb.Schema.NestedBlock(
            type_name=name,
            block=block_to_pb(spec["block"]),
            nesting=_NESTING[spec["nesting_mode"]],
            min_items=spec.get("min_items", 0),
            max_items=spec.get("max_items", 0),
        )
        for name, spec in sorted(block.get("block_types", {}).items())
    ]
    return pb.Schema.Block(attributes=attributes, block_types=nested)


def placeholder(type_: Any, name: str) -> Any:
    """A known value of the type, for what only the real API could tell."""
    if type_ == "string":
        return f"offline-{name}"
    if type_ == "number":
        return 0
    if type_ == "bool":
        return False
    if isinstance(type_, list) and type_[0] in ("list", "set"):
        return []
    if isinstance(type_, list) and type_[0] == "map":
        return {}
    return None


def fill(value: Any, block: Block, *, mode: str) -> Any:
    """Walk an object of `block`: computed nulls become unknown (plan) or placeholders."""
    if value is None or value is Unknown:
        return value
    out = dict(value)
    for name, spec in block.get("attributes", {}).items():
        if spec.get("computed") and out.get(name) is None:
            out[name] = Unknown if mode == "plan" else placeholder(spec["type"], name)
        elif mode != "plan" and out.get(name) is Unknown:
            out[name] = placeholder(spec["type"], name)
    for name, spec in block.get("block_types", {}).items():
        inner = out.get(name)
        if spec["nesting_mode"] == "single":
            out[name] = fill(inner, spec["block"], mode=mode)
        elif isinstance(inner, list):
            out[name] = [fill(item, spec["block"], mode=mode) for item in inner]
    return out


class OfflineServicer(rpc.ProviderServicer):  # type: ignore[misc]
    schema: ClassVar[dict[str, Any]] = {}

    def __init__(self, _app: object) -> None:
        self.resources: dict[str, Block] = {
            k: v["block"] for k, v in self.schema["resource_schemas"].items()
        }
        self.data_sources: dict[str, Block] = {
            k: v["block"] for k, v in self.schema["data_source_schemas"].items()
        }

    def GetMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC names
        return pb.GetMetadata.Response(
            server_capabilities=pb.ServerCapabilities(plan_destroy=True),
            resources=[pb.GetMetadata.ResourceMetadata(type_name=t) for t in self.resources],
            data_sources=[
                pb.GetMetadata.DataSourceMetadata(type_name=t) for t in self.data_sources
            ],
        )

    def GetProviderSchema(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.GetProviderSchema.Response(
            provider=pb.Schema(version=0, block=block_to_pb(self.schema["provider"]["block"])),
            provider_meta=pb.Schema(version=0, block=pb.Schema.Block()),
            resource_schemas={
                name: pb.Schema(version=spec.get("version", 0), block=block_to_pb(spec["block"]))
                for name, spec in self.schema["resource_schemas"].items()
            },
            data_source_schemas={
                name: pb.Schema(version=spec.get("version", 0), block=block_to_pb(spec["block"]))
                for name, spec in self.schema["data_source_schemas"].items()
            },
        )

    def ValidateProviderConfig(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.ValidateProviderConfig.Response()

    def ValidateResourceConfig(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.ValidateResourceConfig.Response()

    def ValidateDataResourceConfig(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.ValidateDataResourceConfig.Response()

    def ConfigureProvider(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.ConfigureProvider.Response()

    def UpgradeResourceState(self, request: Any, context: Any) -> Any:  # noqa: N802
        state = json.loads(request.raw_state.json) if request.raw_state.json else None
        return pb.UpgradeResourceState.Response(upgraded_state=to_dynamic_value(state))

    def ReadResource(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.ReadResource.Response(new_state=request.current_state, private=request.private)

    def PlanResourceChange(self, request: Any, context: Any) -> Any:  # noqa: N802
        proposed = read_dynamic_value(request.proposed_new_state)
        planned = fill(proposed, self.resources[request.type_name], mode="plan")
        return pb.PlanResourceChange.Response(planned_state=to_dynamic_value(planned))

    def ApplyResourceChange(self, request: Any, context: Any) -> Any:  # noqa: N802
        planned = read_dynamic_value(request.planned_state)
        state = fill(planned, self.resources[request.type_name], mode="apply")
        return pb.ApplyResourceChange.Response(new_state=to_dynamic_value(state))

    def ReadDataSource(self, request: Any, context: Any) -> Any:  # noqa: N802
        config = read_dynamic_value(request.config)
        state = fill(config, self.data_sources[request.type_name], mode="apply")
        return pb.ReadDataSource.Response(state=to_dynamic_value(state))

    def ImportResourceState(self, request: Any, context: Any) -> Any:  # noqa: N802
        diagnostic = pb.Diagnostic(
            severity=pb.Diagnostic.ERROR, summary="the offline provider cannot import"
        )
        return pb.ImportResourceState.Response(diagnostics=[diagnostic])

    def GetFunctions(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.GetFunctions.Response()

    def StopProvider(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.StopProvider.Response()


class _Stub:
    def full_name(self) -> str:
        return "hashicorp/google"


def main() -> None:
    OfflineServicer.schema = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    tf.provider.ProviderServicer = OfflineServicer
    run_provider(_Stub(), sys.argv[2:])


if __name__ == "__main__":
    main()
