"""What a flow run prints goes to its Prefect run log as well, so the Prefect UI shows the lines a terminal
shows: stages started, skipped and finished, each epoch's figures, progress lines (`components.kit.progress`).

    @flow(name="miniaturize", log_prints=False)
    def pipeline(...):
        with printed_to_run_log():
            ...

Why not Prefect's `log_prints=True`: it turns each print into a log record instead of a print, so on a
terminal the line moves to standard error, prefixed with a time and the run's name, and is gone from
standard output, where scripts and the tests read what `miniaturize run` prints (`[distill] started`, ...).
Here `print` keeps writing exactly what it wrote before, and each line printed to standard output is also
sent, at INFO, to the run's log (the flow run's, or the task run's inside a task) through Prefect's API log
handler alone: the console handler would show it a second time.
"""

from __future__ import annotations

import builtins
import io
import logging
import sys
from contextlib import contextmanager


@contextmanager
def printed_to_run_log():
    """Within the block, every `print` to standard output is also a line of the current Prefect run's log. A
    flow run inside another (a subflow) finds it on already and leaves it to the outer one."""
    original = builtins.print
    if getattr(original, "tees_to_run_log", False):
        yield
        return
    from prefect.logging.handlers import APILogHandler

    handler = APILogHandler()

    def tee(*args, **kwargs):
        original(*args, **kwargs)
        if kwargs.get("file") not in (None, sys.stdout):
            return
        text = io.StringIO()
        original(*args, **{**kwargs, "file": text, "flush": False})
        send(handler, text.getvalue().rstrip())

    tee.tees_to_run_log = True
    builtins.print = tee
    try:
        yield
    finally:
        builtins.print = original


def send(handler: logging.Handler, text: str) -> None:
    """`text` as an INFO record of the current run, sent by `handler`; nothing outside a run (a thread the run
    started has no run context) or for an empty line."""
    from prefect.context import FlowRunContext, TaskRunContext

    in_task = TaskRunContext.get() is not None
    if not text or not (in_task or FlowRunContext.get() is not None):
        return
    # The same logger names as Prefect's own run loggers; the handler finds the run ids in the context.
    name = "prefect.task_runs" if in_task else "prefect.flow_runs"
    handler.handle(logging.LogRecord(name, logging.INFO, __file__, 0, text, None, None))
