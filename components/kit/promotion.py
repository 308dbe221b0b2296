"""The champion's history and what a rollback returns to. Pure: alias events in, decisions out.

Every alias move is an event {alias, version, action, at, by, reason, forced, failed_checks}. Replaying the
champion's events gives a stack of reigns: `set` pushes a version, `rollback` pops back to the one before.
`rollback_target` is the version under the current champion on that stack.
"""

from __future__ import annotations

import time

CHAMPION, CHALLENGER = "champion", "challenger"


class RollbackError(RuntimeError):
    """There is no earlier champion to go back to, or the history does not match the registry."""


def event(
    alias: str,
    version: str,
    action: str,
    by: str,
    reason: str,
    forced: bool = False,
    failed_checks: list[str] | None = None,
) -> dict:
    return {
        "alias": alias,
        "version": str(version),
        "action": action,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "by": by,
        "reason": reason,
        "forced": forced,
        "failed_checks": list(failed_checks or []),
    }


def champion_stack(events: list[dict]) -> list[str]:
    stack: list[str] = []
    for e in events:
        if e["alias"] != CHAMPION:
            continue
        if e["action"] == "rollback" and stack:
            stack.pop()
        if not stack or stack[-1] != e["version"]:
            stack.append(e["version"])
    return stack


def rollback_target(events: list[dict], current: str | None) -> str:
    """The champion before `current`, by the recorded history."""
    stack = champion_stack(events)
    if current is None:
        raise RollbackError("there is no champion to roll back")
    if not stack or stack[-1] != str(current):
        raise RollbackError(
            f"the recorded history ends with champion {stack[-1] if stack else 'none'}, but the "
            f"registry's champion is version {current}; move the alias with `promote` instead"
        )
    if len(stack) < 2:
        raise RollbackError(f"version {current} is the first champion: there is no previous champion")
    return stack[-2]
