"""One cold function in-process: load it as functions-framework does, answer one real request.

    python [-X importtime] -m bench.cold_probe REQUEST_JSON

REQUEST_JSON names the function (`target`, `source`, `signature`) and the
request (`method`, `path`, `headers`, `body`, optionally `second_body` for the
warm request that follows). Prints one JSON line with the
phase timings and the status; with `-X importtime` the import log on stderr is
split by a marker line into module load and first request. The environment
points the function at the emulators, as for a served function.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import json  # noqa: E402 - the clock starts before anything else is imported
import sys  # noqa: E402

FIRST_REQUEST_MARKER = "bench.cold_probe: first request"


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    # What `python -m functions_framework` imports before it loads the function.
    import functions_framework._cli  # noqa: F401
    from functions_framework import create_app
    from functions_framework._http import create_server

    framework = time.perf_counter()
    app = create_app(spec["target"], spec["source"], spec["signature"])  # type: ignore[no-untyped-call]
    create_server(app, False)  # type: ignore[no-untyped-call]
    loaded = time.perf_counter()
    print(FIRST_REQUEST_MARKER, file=sys.stderr, flush=True)
    client = app.test_client()
    request = {
        "method": spec["method"],
        "path": spec["path"],
        "headers": spec.get("headers") or {},
        "data": spec.get("body"),
    }
    first = client.open(**request)
    answered = time.perf_counter()
    # A worker's second delivery needs a task of its own, or it only skips a finished one.
    second = client.open(**{**request, "data": spec.get("second_body", request["data"])})
    again = time.perf_counter()
    print(
        json.dumps(
            {
                "status": first.status_code,
                "second_status": second.status_code,
                "framework_ms": (framework - STARTED) * 1000,
                "load_ms": (loaded - framework) * 1000,
                "first_request_ms": (answered - loaded) * 1000,
                "warm_request_ms": (again - answered) * 1000,
                "bodies": [first.get_data(as_text=True), second.get_data(as_text=True)],
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
