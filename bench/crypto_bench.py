"""Task data encryption cost, as a ratio against plain AES-256-GCM of the same bytes.

Per task the service wraps a fresh data key and seals the payload (submit),
then unwraps the key and opens the payload (worker). That whole round trip is
measured per scheme and payload size, next to AES-256-GCM encrypt + decrypt of
the same serialised bytes under an already-built key, timed in the same run.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.security.crypto import FERNET, HYBRID, TaskOpener, TaskSealer, generate_keyring

SIZES = {"1 KiB": 1024, "100 KiB": 100 * 1024}
TARGET_US = 500.0  # whole per-task crypto for a 1 KiB payload


@dataclass(frozen=True)
class Row:
    scheme: str
    size: str
    per_task_us: float
    wrap_us: float
    unwrap_us: float
    body_us: float
    json_us: float
    aes_us: float

    @property
    def ratio(self) -> float:
        return self.per_task_us / self.aes_us

    @property
    def body_ratio(self) -> float:
        return self.body_us / self.aes_us


def median_us(fn: Callable[[], object], *, rounds: int, inner: int = 1) -> float:
    """Median over `rounds` of the mean time per call of `inner` back-to-back calls."""
    for _ in range(max(rounds // 10, 5)):  # warm caches and allocators
        fn()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - start) / inner)
    return statistics.median(samples) * 1e6


def payload_of(size: int) -> dict[str, Any]:
    """A JSON object whose compact serialisation is exactly `size` bytes."""
    value = {"data": ""}
    value["data"] = "x" * (size - len(json.dumps(value, separators=(",", ":"))))
    return value


def measure(scheme: str, size_name: str, *, quick: bool) -> Row:
    ring = generate_keyring(scheme)
    sealer = TaskSealer(ring.public_only())  # as submit_task holds it
    opener = TaskOpener(ring)  # as process_task holds it
    value = payload_of(SIZES[size_name])
    raw = json.dumps(value, separators=(",", ":")).encode()
    assert len(raw) == SIZES[size_name]
    small = SIZES[size_name] <= 1024
    rounds = (200 if quick else 2000) if small else (50 if quick else 400)

    def per_task() -> None:
        key = sealer.new_task_key("tenant", "task")
        blob = key.seal("payload", value)
        opened = opener.open_task_key("tenant", "task", key.wrapped).open("payload", blob)
        assert opened is not None

    key = sealer.new_task_key("tenant", "task")
    aead = AESGCM(os.urandom(32))

    def aes() -> None:
        nonce = os.urandom(12)
        aead.decrypt(nonce, aead.encrypt(nonce, raw, None), None)

    inner = 20 if small else 1
    return Row(
        scheme=scheme,
        size=size_name,
        per_task_us=median_us(per_task, rounds=rounds),
        wrap_us=median_us(lambda: sealer.new_task_key("tenant", "task"), rounds=rounds),
        unwrap_us=median_us(
            lambda: opener.open_task_key("tenant", "task", key.wrapped), rounds=rounds
        ),
        body_us=median_us(
            lambda: key.open("payload", key.seal("payload", value)), rounds=rounds, inner=inner
        ),
        json_us=median_us(lambda: json.loads(_dumps(value)), rounds=rounds, inner=inner),
        aes_us=median_us(aes, rounds=rounds, inner=inner),
    )


def _dumps(value: Any) -> bytes:
    """Serialise as `TaskKey.seal` does, to show what JSON alone costs."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def table(rows: list[Row]) -> str:
    head = (
        f"{'scheme':<24} {'size':>8} {'per task':>10} {'wrap':>8} {'unwrap':>8} "
        f"{'body':>8} {'JSON':>8} {'AES-GCM':>9} {'ratio':>7} {'body ratio':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.scheme:<24} {r.size:>8} {r.per_task_us:>8.1f}us {r.wrap_us:>6.1f}us "
            f"{r.unwrap_us:>6.1f}us {r.body_us:>6.1f}us {r.json_us:>6.1f}us {r.aes_us:>7.1f}us "
            f"{r.ratio:>6.1f}x {r.body_ratio:>9.1f}x"
        )
    return "\n".join(lines)


def main(*, quick: bool = False) -> None:
    rows = [measure(scheme, size, quick=quick) for scheme in (HYBRID, FERNET) for size in SIZES]
    print(
        "per task = new_task_key + seal + open_task_key + open (medians, one core);\n"
        "body = seal + open only; JSON = dumps + loads alone (part of body);\n"
        "AES-GCM = encrypt + decrypt of the same serialised bytes; ratios are against it.\n"
    )
    print(table(rows))
    print()
    for r in rows:
        if r.size == "1 KiB":
            verdict = "meets" if r.per_task_us < TARGET_US else "MISSES"
            print(
                f"{r.scheme}: whole per-task crypto for 1 KiB = {r.per_task_us:.0f} us "
                f"({verdict} the {TARGET_US:.0f} us target)"
            )


if __name__ == "__main__":
    main()
