"""Process-group helpers shared by the stack and its tests."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

# Every process a stack starts inherits `AIA_STACK_RUN=<id>`. pid_max can be as low as
# 32768, so a process-group id remembered for minutes may name someone else's group by
# then; the marker tells ours apart before anything is signalled.
RUN_MARKER_ENV = "AIA_STACK_RUN"


def _carries(pid: int, marker: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # gone, or another user's: not ours either way
        return False
    return f"{RUN_MARKER_ENV}={marker}".encode() in environ.split(b"\0")


def group_members(pgid: int, marker: str | None = None) -> list[int]:
    """Live (non-zombie) processes in process group `pgid`, read from /proc.

    With `marker`, only the members started by the stack run that carries it.
    """
    members: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state, ppid, pgrp, ...
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) >= 3 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    if marker is not None:
        members = [pid for pid in members if _carries(pid, marker)]
    return members


def group_alive(pgid: int, marker: str | None = None) -> bool:
    """Whether any non-zombie process is left in group `pgid` (of run `marker`, if given).

    Zombies are ignored: an orphan whose reaper has not run yet holds no port
    and no memory, and where PID 1 does not reap they would linger forever.
    """
    if Path("/proc/self/stat").exists():
        return bool(group_members(pgid, marker))
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_group(
    pgid: int, sig: signal.Signals = signal.SIGKILL, *, marker: str | None = None
) -> None:
    """Signal a whole process group; a group already gone is fine.

    With `marker`, a group none of whose members carry it is left alone: its id
    was reused by a process this stack did not start.
    """
    if marker is not None and Path("/proc/self/stat").exists() and not group_members(pgid, marker):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
