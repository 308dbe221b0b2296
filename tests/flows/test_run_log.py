"""What a flow run prints reaches its Prefect run log (what the UI shows) and still goes to standard output
exactly as printed, once; a task's lines go to its task run. Against the session's real Prefect server."""

from __future__ import annotations

import builtins
import io


def test_prints_reach_the_run_log_once_and_stdout_unchanged(prefect_api, capsys):
    from prefect import flow, get_client, task
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.run_log import printed_to_run_log

    elsewhere = io.StringIO()

    @task(task_run_name="a stage")
    def stage() -> None:
        print("[distill] started", flush=True)

    @flow(name="run-log-inner")
    def inner() -> str:
        from prefect.runtime import flow_run

        with printed_to_run_log():  # on already: the outer flow's sends it, once, to this subflow's log
            print("  inner line")
        return flow_run.id

    @flow(name="run-log-check")
    def outer() -> list[str]:
        from prefect.runtime import flow_run

        with printed_to_run_log():
            stage()
            subflow_run_id = inner()
            print("to a file, not the log", file=elsewhere)
            print()
        return [flow_run.id, subflow_run_id]

    original = builtins.print
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        run_ids = outer()
        APILogWorker.drain_all(timeout=30)
        with get_client(sync_client=True) as client:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=run_ids)))
    assert builtins.print is original
    printed = capsys.readouterr().out
    assert printed.splitlines() == ["[distill] started", "  inner line", ""]  # no prefix, nothing twice
    assert elsewhere.getvalue() == "to a file, not the log\n"
    messages = [log.message for log in logs]
    assert messages.count("[distill] started") == 1 and messages.count("  inner line") == 1
    assert "to a file, not the log" not in messages and "" not in messages
    started = next(log for log in logs if log.message == "[distill] started")
    assert started.task_run_id is not None and started.name == "prefect.task_runs"
    assert str(next(log for log in logs if log.message == "  inner line").flow_run_id) == run_ids[1]
