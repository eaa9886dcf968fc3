"""hello: functions-framework's hello-world, the baseline of every cold start."""

from __future__ import annotations

import flask
import functions_framework


@functions_framework.http
def hello(request: flask.Request) -> str:
    return "hello"
