"""Run inside a deploy bundle: load the function as Cloud Functions does, serve one request.

Started as `python -I -c <this file's text> TARGET SIGNATURE_TYPE` with the bundle as
working directory, in a virtualenv holding only the bundle's requirements. `-I`
keeps the repository, PYTHONPATH and the cwd off `sys.path`; functions-framework
puts the folder of `main.py` on it, exactly as in production. Prints one JSON line.
"""

import base64
import importlib.abc
import json
import os
import sys
import types

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


def _pubsub_push_event() -> bytes:
    message = {"data": base64.b64encode(b'{"task_id": "bundle-check"}').decode(), "attributes": {}}
    return json.dumps(
        {
            "specversion": "1.0",
            "type": "google.cloud.pubsub.topic.v1.messagePublished",
            "source": "//pubsub.googleapis.com/projects/aia-bundle-check/topics/aia-tasks",
            "id": "bundle-check-1",
            "datacontenttype": "application/json",
            "data": {"message": {**message, "messageId": "1"}, "subscription": "bundle-check"},
        }
    ).encode()


def main() -> None:
    target, signature_type = sys.argv[1], sys.argv[2]
    sys.meta_path.append(_RecordFailedImports(os.getcwd()))
    report: dict[str, object] = {"target": target, "sys_path_has_repo": False}
    try:
        from functions_framework import create_app

        app = create_app(target, "main.py", signature_type)  # type: ignore[no-untyped-call]
    except BaseException as exc:  # report whatever stops the load
        report.update(stage="load", error=f"{type(exc).__name__}: {exc}")
        report["failed_imports"] = failed_imports
        print(json.dumps(report))
        return
    loaded_with = list(failed_imports)
    client = app.test_client()
    try:
        if signature_type == "cloudevent":
            response = client.post(
                "/",
                data=_pubsub_push_event(),
                headers={"Content-Type": "application/cloudevents+json"},
            )
        elif target == "health":
            response = client.get("/health?probe=live")
        else:
            response = client.get("/")
    except BaseException as exc:
        report.update(stage="request", error=f"{type(exc).__name__}: {exc}")
    else:
        report.update(
            stage="served",
            status=response.status_code,
            body=response.get_data(as_text=True)[:400],
        )
    report["failed_imports"] = [name for name in failed_imports if name not in loaded_with]
    report["failed_imports_at_load"] = loaded_with
    print(json.dumps(report))


main()
