"""Run inside a deploy bundle: load the function as Cloud Functions does, serve one request.

Started as `python -I -c <this file's text> TARGET SIGNATURE_TYPE REQUEST` with the
bundle as working directory, in a virtualenv holding only the bundle's
requirements. `-I` keeps the repository, PYTHONPATH and the cwd off `sys.path`;
functions-framework puts the folder of `main.py` on it, exactly as in
production. REQUEST is JSON: `{"method", "path", "headers", "body_b64"}`, the
exchange the caller wants answered (a Pub/Sub push body for a CloudEvent
function, as Pub/Sub sends it). Prints one JSON line.
"""

import base64
import importlib.abc
import json
import os
import sys
import types

MAX_BODY_CHARS = 200_000

failed_imports: list[str] = []


class _RecordFailedImports(importlib.abc.MetaPathFinder):
    """Last finder on the path: consulted only for modules nobody else can find.

    Records the name when the import statement is in the bundle's own code;
    third-party libraries probing for optional extras are not our concern.
    """

    def __init__(self, bundle_dir: str) -> None:
        self.bundle_dir = bundle_dir + os.sep

    def find_spec(self, fullname, path=None, target=None):  # type: ignore[no-untyped-def]
        frame: types.FrameType | None = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename.startswith("<frozen"):
            frame = frame.f_back
        if frame is not None and frame.f_code.co_filename.startswith(self.bundle_dir):
            failed_imports.append(fullname)


def main() -> None:
    target, signature_type, request = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    sys.meta_path.append(_RecordFailedImports(os.getcwd()))
    report: dict[str, object] = {"target": target}
    try:
        from functions_framework import create_app

        app = create_app(target, "main.py", signature_type)  # type: ignore[no-untyped-call]
    except BaseException as exc:  # report whatever stops the load
        report.update(stage="load", error=f"{type(exc).__name__}: {exc}")
        report["failed_imports"] = failed_imports
        print(json.dumps(report))
        return
    loaded_with = list(failed_imports)
    try:
        response = app.test_client().open(
            request["path"],
            method=request["method"],
            headers=request.get("headers", {}),
            data=base64.b64decode(request.get("body_b64", "")),
        )
    except BaseException as exc:
        report.update(stage="request", error=f"{type(exc).__name__}: {exc}")
    else:
        report.update(
            stage="served",
            status=response.status_code,
            content_type=response.headers.get("Content-Type", ""),
            body=response.get_data(as_text=True)[:MAX_BODY_CHARS],
        )
    report["failed_imports"] = [name for name in failed_imports if name not in loaded_with]
    report["failed_imports_at_load"] = loaded_with
    print(json.dumps(report))


main()
