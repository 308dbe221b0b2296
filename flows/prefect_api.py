"""The Prefect API of a `miniaturize` process: a temporary server that dies with the process, and the flow runs
that a killed process left running.

Without `PREFECT_API_URL`, Prefect starts a temporary API server in a subprocess and stops it when the process
exits; a process killed with SIGKILL never gets that far, and the server lives on, orphaned. `temporary_api`
starts the same server (Prefect's app on loopback, its database in `PREFECT_HOME`) through a small launcher
that asks the kernel to send it SIGTERM when the process that started it dies (`PR_SET_PDEATHSIG`, Linux),
and points the process at it. With `PREFECT_API_URL` set, or on another system, it changes nothing.

`crash_flow_run` marks a flow run, and its task runs still open, Crashed: a run killed mid-way never reports
its own end (`flows.pipeline.settle_killed_runs`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from uuid import UUID

# Run by the server's launcher before it becomes the server (execv keeps the pid and the death signal).
# Checking the parent after prctl closes the window where it died before the signal was asked for.
LAUNCHER = """
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    sys.exit(0)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""
PORT_IN_USE = 3  # uvicorn's exit status when it cannot bind (another process took the port first)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(port: int) -> list[str]:
    """Prefect's own temporary server: its app, on loopback, quiet, without the UI."""
    return [
        sys.executable,
        "-c",
        LAUNCHER,
        str(os.getpid()),
        "-m",
        "uvicorn",
        "--factory",
        "prefect.server.api.server:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "error",
        "--lifespan",
        "on",
    ]


def start_server(timeout_seconds: float) -> tuple[subprocess.Popen, str]:
    """Start the server and wait until it answers; (process, API URL)."""
    from prefect.settings import get_current_settings

    env = (
        os.environ
        | get_current_settings().to_environment_variables(exclude_unset=True)
        | {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    )
    deadline = time.monotonic() + timeout_seconds
    while True:
        port = free_port()
        url = f"http://127.0.0.1:{port}/api"
        proc = subprocess.Popen(server_command(port), env=env)
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    return proc, url
            except OSError:
                time.sleep(0.2)
        if proc.poll() != PORT_IN_USE or time.monotonic() >= deadline:
            stop_server(proc)
            raise RuntimeError(
                f"the temporary Prefect API did not answer within {timeout_seconds:.0f} s "
                f"(exit status {proc.returncode}); set PREFECT_API_URL to a running Prefect "
                f"server, or raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
            )


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def temporary_api():
    """Within the block, this process uses a temporary Prefect API that cannot outlive it (when
    `PREFECT_API_URL` is unset, on Linux). Enter it from the main thread: the kernel signals the server when
    the thread that started it ends."""
    from prefect.context import refresh_global_settings_context
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not sys.platform.startswith("linux"):
        yield
        return
    proc, url = start_server(settings.server.ephemeral.startup_timeout_seconds)
    os.environ["PREFECT_API_URL"] = url
    refresh_global_settings_context()  # Prefect read its settings at import
    try:
        yield
    finally:
        drain_background_workers()
        os.environ.pop("PREFECT_API_URL", None)
        refresh_global_settings_context()
        stop_server(proc)


def drain_background_workers(timeout_s: float = 10.0) -> None:
    """Send the flow-run logs and events Prefect's background workers still hold while the API is up: once
    it is stopped they retry against a closed port when this process exits (a minute of exit delay)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=timeout_s)
    EventsWorker.drain_all(timeout=timeout_s)


def this_flow_run() -> dict:
    """The flow run this is called in, and its API: what a later run needs to mark it crashed."""
    from prefect.runtime import flow_run
    from prefect.settings import get_current_settings

    return {"prefect_flow_run_id": flow_run.id, "prefect_api": get_current_settings().api.url}


def crash_flow_run(flow_run_id: str, message: str) -> str:
    """Mark the flow run and its task runs still open Crashed, on the current Prefect API; says what it did."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(UUID(flow_run_id))
        except ObjectNotFound:
            return f"Prefect flow run {flow_run_id} is not on this Prefect API ({client.api_url}); left as it is"
        if run.state is not None and run.state.is_final():
            return f"Prefect flow run {flow_run_id} ({run.name}) had already ended: {run.state.type.value}"
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        for task_run in tasks:
            if task_run.state is not None and not task_run.state.is_final():
                client.set_task_run_state(task_run.id, Crashed(message=message), force=True)
        client.set_flow_run_state(run.id, Crashed(message=message), force=True)
    return f"Prefect flow run {flow_run_id} ({run.name}) marked CRASHED"
