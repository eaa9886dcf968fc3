"""The document as the openapi function serves it: built once per instance and settings."""

from __future__ import annotations

import functools
import json

from shared.api.openapi import build
from shared.config import get_settings
from shared.tasks.registry import builtin_registry


def openapi_json() -> bytes:
    settings = get_settings()
    # The same switch submit obeys: a type refused at submit is not offered here.
    return _render(settings.diagnostic_tasks, settings.version, settings.public_base_url)


@functools.cache
def _render(diagnostic: bool, version: str, server_url: str) -> bytes:
    document = build(
        builtin_registry(), diagnostic=diagnostic, version=version, server_url=server_url
    )
    return json.dumps(document, separators=(",", ":")).encode()
