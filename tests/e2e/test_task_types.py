"""A team's own task type: one file in its package, a restart, and it runs end to end."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from devtools.client import AiaClient
from devtools.stack_process import running_stack, start_stack

pytestmark = pytest.mark.e2e

GREET = """
from pydantic import BaseModel, Field

from shared.tasks.registry import TaskContext, task_type


class GreetPayload(BaseModel):
    name: str = Field(min_length=1, max_length=40)


class Greeting(BaseModel):
    text: str
    attempt: int


@task_type("acme.greet", GreetPayload, result_model=Greeting)
def greet(payload: GreetPayload, ctx: TaskContext) -> Greeting:
    return Greeting(text=f"hello, {payload.name}", attempt=ctx.attempt)
"""


def package(root: Path, name: str, modules: dict[str, str]) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("# A team's task types.\n")
    for module, source in modules.items():
        (folder / f"{module}.py").write_text(textwrap.dedent(source))
    return root


def test_a_team_task_type_is_validated_and_run(tmp_path: Path) -> None:
    code = package(tmp_path / "code", "acmetasks", {"greet": GREET})
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AIA_TASK_MODULES", "acmetasks")
        env.setenv("PYTHONPATH", str(code))
        with running_stack(tmp_path / "stack") as stack:
            client = AiaClient(stack.base_url, stack.api_key)
            bad = client.submit({"type": "acme.greet", "payload": {"name": ""}})
            assert bad.status_code == 422, bad.text
            assert bad.json()["field"] == "payload.name"
            resp = client.submit({"type": "acme.greet", "payload": {"name": "ada"}})
            assert resp.status_code == 202, resp.text
            done = client.wait_for(resp.json()["task_id"])
            assert done["status"] == "succeeded", done
            assert done["result"] == {"text": "hello, ada", "attempt": 1}
            # The built-in types are still there, loaded the same way.
            echo = client.submit({"type": "echo", "payload": {}})
            assert client.wait_for(echo.json()["task_id"])["status"] == "succeeded"


def test_a_broken_task_module_stops_start_up_with_a_clear_message(tmp_path: Path) -> None:
    code = package(tmp_path / "code", "brokentasks", {"oops": "import not_a_real_module\n"})
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AIA_TASK_MODULES", "brokentasks")
        env.setenv("PYTHONPATH", str(code))
        with pytest.raises(RuntimeError) as caught:
            start_stack(tmp_path / "stack", timeout_s=120)
    assert "task module 'brokentasks.oops' cannot be imported" in str(caught.value)
    assert "not_a_real_module" in str(caught.value)
