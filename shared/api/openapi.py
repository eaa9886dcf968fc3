"""The OpenAPI 3.1 document, generated from the route table and the functions' own models.

Every schema comes from a pydantic model the functions validate or answer
with (`models_json_schema`, refs under `#/components/schemas`); the submit body
is one schema per registered task type, discriminated by `type`, so the
document says exactly which payloads are accepted.
"""

from __future__ import annotations

import copy
import importlib
import re
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from shared.api import routes
from shared.api.routes import PROBLEM, PROBLEM_BASE, Answer, Auth, Route
from shared.tasks.registry import TaskRegistry

OPENAPI_VERSION = "3.1.0"
REF = "#/components/schemas/{model}"
PROBLEM_MODEL = "shared.api.models:Problem"
TASK_REQUEST = "TaskRequest"
WORKFLOW_NODE = "WorkflowNode"  # shared.workflows.models: a task request inside a workflow

INLINE_SCHEMAS: dict[str, dict[str, Any]] = {
    "text": {"type": "string"},
    "openapi": {
        "type": "object",
        "required": ["openapi", "info", "paths"],
        "properties": {"openapi": {"type": "string", "pattern": "^3\\.1\\."}},
    },
}

SECURITY_SCHEMES = {
    "apiKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "A tenant's API key (`aia_<id>_<secret>`), from `aia keys create`",
    },
    "metricsToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "The operators' metrics token (AIA_METRICS_TOKEN). Where none is "
        "configured (local development) these endpoints are open",
    },
}
_SECURITY: dict[Auth, list[dict[str, list[str]]]] = {
    Auth.NONE: [],
    Auth.API_KEY: [{"apiKey": []}],
    # Either the token or nothing: which one applies is deployment configuration.
    Auth.OPERATOR: [{"metricsToken": []}, {}],
}

DESCRIPTION = """\
Serverless background tasks: submit a task, read its status and result.

Errors are RFC 7807 `application/problem+json`; `type` is
`https://aia.dev/problems/<code>`, and each response below lists the codes it
can carry. Any path outside this document answers 404 (`not-found`); a method a
path does not serve answers 405 (`method-not-allowed`) with an `Allow` header.
"""


def resolve(ref: str) -> type[BaseModel]:
    module, _, name = ref.partition(":")
    model = getattr(importlib.import_module(module), name)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise TypeError(f"{ref} is not a pydantic model")
    return model


def _component_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def _problem_schema(answer: Answer, problem_ref: str) -> dict[str, Any]:
    return {
        "allOf": [{"$ref": problem_ref}],
        "properties": {
            "type": {"enum": [PROBLEM_BASE + code for code in answer.problems]},
            "status": {"const": answer.status},
        },
    }


def _headers(names: Iterable[str]) -> dict[str, Any]:
    return {
        name: {
            "description": routes.HEADERS[name].description,
            "required": routes.HEADERS[name].required,
            "schema": dict(routes.HEADERS[name].schema),
        }
        for name in names
    }


class _Schemas:
    """Collects the models a document needs and generates them in one pass."""

    def __init__(self) -> None:
        self.wanted: dict[tuple[str, JsonSchemaMode], type[BaseModel]] = {}

    def want(self, ref: str, mode: JsonSchemaMode) -> None:
        self.wanted[(ref, mode)] = resolve(ref)

    def want_model(self, model: type[BaseModel], mode: JsonSchemaMode) -> str:
        key = (f"{model.__module__}:{model.__qualname__}", mode)
        self.wanted[key] = model
        return key[0]

    def generate(self) -> tuple[dict[tuple[str, JsonSchemaMode], str], dict[str, Any]]:
        """Ref of each wanted model, and every definition by component name."""
        keys = list(self.wanted)
        mapping, top = models_json_schema(
            [(self.wanted[key], key[1]) for key in keys], ref_template=REF
        )
        refs = {key: mapping[(self.wanted[key], key[1])]["$ref"] for key in keys}
        return refs, dict(top.get("$defs", {}))


def build(
    registry: TaskRegistry,
    *,
    diagnostic: bool,
    version: str,
    server_url: str = "",
    table: Iterable[Route] = routes.ROUTES,
) -> dict[str, Any]:
    """The document for this deployment: its task types, its version, its base URL."""
    documented = [r for r in table if r.documented]
    schemas = _Schemas()
    schemas.want(PROBLEM_MODEL, "serialization")
    for route in documented:
        if route.body:
            schemas.want(route.body, "validation")
        for answer in route.answers:
            for content in answer.content:
                if ":" in content.schema:
                    schemas.want(content.schema, "serialization")
    task_types = [registry.get(name) for name in registry.names(include_diagnostic=diagnostic)]
    payload_keys = {t.name: schemas.want_model(t.payload_model, "validation") for t in task_types}
    refs, components = schemas.generate()

    def ref(model: str, mode: JsonSchemaMode) -> str:
        return refs[(model, mode)]

    payload_refs = {name: ref(key, "validation") for name, key in payload_keys.items()}
    if any(r.body_by_task_type for r in documented):
        base_ref = next(
            ref(r.body, "validation") for r in documented if r.body_by_task_type and r.body
        )
        _by_task_type(
            components,
            base_ref.rsplit("/", 1)[1],
            TASK_REQUEST,
            payload_refs,
            "What a client submits: `payload` is validated by the model of its `type`.",
        )
    if WORKFLOW_NODE in components:
        _by_task_type(
            components,
            WORKFLOW_NODE,
            WORKFLOW_NODE,
            payload_refs,
            "One node of a workflow: `payload` is validated by the model of its `type`.",
        )

    problem_ref = ref(PROBLEM_MODEL, "serialization")
    paths: dict[str, dict[str, Any]] = {}
    for route in documented:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, ref, problem_ref)
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "AIA", "version": version, "description": DESCRIPTION},
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": SECURITY_SCHEMES,
            "responses": {
                "NotFound": _response(routes.NOT_FOUND, ref, problem_ref),
                "MethodNotAllowed": _response(routes.METHOD_NOT_ALLOWED, ref, problem_ref),
            },
        },
        "tags": [
            {"name": "tasks", "description": "Submitting and reading tasks (an API key)"},
            {"name": "schedules", "description": "Cron schedules that submit tasks (an API key)"},
            {"name": "workflows", "description": "Static DAGs of task nodes (an API key)"},
            {"name": "operations", "description": "Health and metrics (the metrics token)"},
            {"name": "meta", "description": "This document and the dashboard"},
        ],
    }
    if server_url:
        document["servers"] = [{"url": server_url}]
    return document


def _by_task_type(
    components: dict[str, Any],
    component: str,
    title: str,
    payload_refs: dict[str, str],
    description: str,
) -> None:
    """Replace a request component by one variant per task type, told apart by `type`."""
    base = components[component]
    mapping: dict[str, str] = {}
    for task_name, payload_ref in payload_refs.items():
        name = _component_name(f"{title}.{task_name}")
        variant = copy.deepcopy(base)
        variant["title"] = f"{title} ({task_name})"
        variant["properties"]["type"] = {"const": task_name}
        variant["properties"]["payload"] = {"$ref": payload_ref}
        components[name] = variant
        mapping[task_name] = REF.format(model=name)
    components[component] = {
        "title": title,
        "description": description,
        "oneOf": [{"$ref": target} for target in mapping.values()],
        "discriminator": {"propertyName": "type", "mapping": mapping},
    }


def _operation(route: Route, ref: Any, problem_ref: str) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "tags": [route.tag],
        "security": _SECURITY[route.auth],
    }
    if route.description:
        operation["description"] = route.description
    if route.params:
        operation["parameters"] = [
            {
                "name": p.name,
                "in": p.location,
                "description": p.description,
                "required": p.required,
                "schema": dict(p.schema),
            }
            for p in route.params
        ]
    if route.body:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": ref(route.body, "validation")}}},
        }
    operation["responses"] = {
        str(answer.status): _response(answer, ref, problem_ref) for answer in route.answers
    }
    return operation


def _response(answer: Answer, ref: Any, problem_ref: str) -> dict[str, Any]:
    response: dict[str, Any] = {"description": answer.description}
    if answer.headers:
        response["headers"] = _headers(answer.headers)
    content: dict[str, Any] = {}
    for body in answer.content:
        schema = (
            {"$ref": ref(body.schema, "serialization")}
            if ":" in body.schema
            else copy.deepcopy(INLINE_SCHEMAS[body.schema])
        )
        content[body.media_type] = {"schema": schema}
    if answer.problems:
        content[PROBLEM] = {"schema": _problem_schema(answer, problem_ref)}
    if content:
        response["content"] = content
    return response
