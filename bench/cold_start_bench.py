"""Cold-start import cost of each function, as a ratio against functions_framework alone.

Every function pays for functions_framework; what our code adds on top of it
is what we control. Each figure is the median of fresh interpreters loading
the function exactly as the framework does (`create_app`), measured in the same
run as the baseline.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "import functions_framework"
LOAD = "from functions_framework import create_app; create_app({name!r}, {source!r}, {signature!r})"
SIGNATURES = {"process_task": "cloudevent"}


def _time(code: str, runs: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


def main(*, quick: bool = False) -> None:
    runs = 3 if quick else 7
    # One untimed load of everything first, so the disk cache favours no one.
    _time("import google.cloud.firestore, google.cloud.pubsub_v1, functions_framework", 1)
    base = _time(BASELINE, runs)
    print(f"baseline `{BASELINE}` in a fresh interpreter: {base:.0f} ms (median of {runs})")
    print(f"{'function':<14} {'load ms':>8} {'added ms':>9} {'ratio':>6}")
    for folder in sorted(p for p in (ROOT / "functions").iterdir() if (p / "main.py").exists()):
        name = folder.name
        code = LOAD.format(
            name=name, source=str(folder / "main.py"), signature=SIGNATURES.get(name, "http")
        )
        load = _time(code, runs)
        print(f"{name:<14} {load:8.0f} {load - base:9.0f} {load / base:6.2f}")
