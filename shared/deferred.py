"""The base of AIA's pydantic models: each schema is built at its first use, not at import.

A function imports many more models than it uses (`submit_task` loads the
webhook and workflow models with the modules that stage their events), and
building them all at import was about a third of `shared`'s own cold-start cost.
The first build is locked from pydantic 2.14 on (the functions serve requests on
threads), and a unit test builds every model, so a broken schema still fails there.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class DeferredModel(BaseModel):
    model_config = ConfigDict(defer_build=True)
