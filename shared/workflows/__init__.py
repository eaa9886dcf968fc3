"""Orchestration: a task that hands its work to child tasks and a continuation (fan-out/fan-in)."""
