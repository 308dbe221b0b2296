"""Two runs in one workspace never interleave: the second waits for the lock (`--wait`) or stops with a
message naming the run that holds it (exit 5). The lock is the kernel's, so a killed run releases it."""

from __future__ import annotations

import os
import subprocess

from flows.lock import workspace_lock
from tests.flows.conftest import BIN, run_cli


def test_a_second_run_stops_with_a_message_naming_the_holder(tiny_project, prefect_api):
    with workspace_lock(tiny_project, "miniaturize run nightly"):
        done = run_cli(["run", "--until", "ingest"], tiny_project, prefect_api)
    assert done.returncode == 5, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"the workspace {tiny_project} is in use by miniaturize run nightly (pid {os.getpid()}" in done.stderr
    assert "nothing was changed" in done.stderr and "--wait SECONDS" in done.stderr
    assert not (tiny_project / "data" / "prepared").exists() and not (tiny_project / "mlflow.db").exists()


def test_two_runs_started_together_run_one_after_the_other(tiny_project, prefect_api):
    env = os.environ | {"PREFECT_API_URL": prefect_api, "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = [
        subprocess.Popen(
            [str(BIN / "miniaturize"), "run", "--until", "validate", "--wait", "300"],
            cwd=tiny_project,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outs = [proc.communicate(timeout=400) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outs
    # One of them did the work; the other waited, then found it done.
    ran = sorted("[ingest] started" in out for out, _ in outs)
    assert ran == [False, True], outs
    skipped = next(out for out, _ in outs if "[ingest] started" not in out)
    assert "[ingest] unchanged" in skipped and "[validate] unchanged" in skipped


def test_a_stage_run_by_dvc_stops_too_while_a_run_holds_the_workspace(tiny_project, prefect_api):
    with workspace_lock(tiny_project, "miniaturize run"):
        done = run_cli(["stage", "ingest"], tiny_project, prefect_api)
    assert done.returncode == 5, done.stdout[-2000:] + done.stderr[-2000:]
    assert "is in use by miniaturize run" in done.stderr
    assert not (tiny_project / "data" / "prepared").exists()
