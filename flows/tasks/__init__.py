"""The tasks: one module per task (`classification.py`, `causal_lm.py`, `multitask.py`), each building its record, and `TASKS`,
the one dict that names them. Everything outside a task's own module reaches it through `TASKS` or
`task_for(params)`, and reads the record (`flows.stages.Task`), never the task's name.

Adding a task: docs/tasks.md.
"""

from __future__ import annotations

from components.config import Params
from flows.stages import Task
from flows.tasks import causal_lm, classification, multitask

TASKS: dict[str, Task] = {
    classification.TASK.name: classification.TASK,
    causal_lm.TASK.name: causal_lm.TASK,
    multitask.TASK.name: multitask.TASK,
}


def task_for(params: Params) -> Task:
    """The record of the task the params name (`task:`; the config has checked it is one of TASKS)."""
    return TASKS[params.task]


__all__ = ["TASKS", "Task", "task_for"]
