"""The document as the openapi function serves it: built once per instance, for its settings."""

from __future__ import annotations

import functools
import json

from shared.api.openapi import build
from shared.config import get_settings
from shared.tasks.registry import builtin_registry


@functools.cache
def openapi_json() -> bytes:
    settings = get_settings()
    document = build(
        builtin_registry(),
        # The same switch submit obeys: a type refused at submit is not offered here.
        diagnostic=settings.diagnostic_tasks,
        version=settings.version,
        server_url=settings.public_base_url,
    )
    return json.dumps(document, separators=(",", ":")).encode()
