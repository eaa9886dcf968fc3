"""schedule_tick: POST / from Cloud Scheduler — queue due delayed tasks, fire due cron slots.

An empty body ticks once (the local stack calls it about once a second);
`{"for_s": 55, "every_s": 1}` keeps ticking for most of a minute, which is how
one Cloud Scheduler job a minute gives second-level lateness in production.
"""

from __future__ import annotations

import flask
import functions_framework
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared import http, providers
from shared.errors import ValidationFailed
from shared.scheduling.ticker import MAX_LOOP_S

# At start-up: a broken task module stops the function here, not on a tick.
providers.task_registry()


class TickRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    for_s: float = Field(default=0.0, ge=0, le=MAX_LOOP_S)
    every_s: float = Field(default=1.0, ge=0.2, le=60)


@functions_framework.http
@http.endpoint
def schedule_tick(request: flask.Request) -> flask.Response:
    http.require_method(request, "POST")
    # No body (or `{}`) is one tick.
    body = http.read_json_body(request) if request.content_length else {}
    try:
        tick = TickRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise ValidationFailed(f"{field}: {first['msg']}", field=field) from exc
    ticker = providers.ticker()
    if tick.for_s == 0:
        ticked = ticker.tick()
    else:
        ticked = ticker.run(for_s=tick.for_s, every_s=tick.every_s)
    return http.json_response(ticked.as_json())
