"""A run killed while it holds the workspace leaves its record (`flows.lock`): kept until a pipeline run has
marked its Prefect flow run and MLflow runs as ended, even when the commands in between do not."""

from __future__ import annotations

import subprocess
import sys

from flows.lock import holder, killed_runs, settled, workspace_lock

HOLD_THEN_DIE = """
import os, signal, sys
from pathlib import Path
from flows.lock import note, workspace_lock
with workspace_lock(Path(sys.argv[1]), "miniaturize run nightly"):
    note(Path(sys.argv[1]), prefect_flow_run_id="0b6f7d2e-3c1a-4f7e-9d55-2a8c6e1b4f90", mlflow_run_id="abc123")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_record_of_a_killed_holder_is_kept_until_settled(tmp_path):
    died = subprocess.run([sys.executable, "-c", HOLD_THEN_DIE, str(tmp_path)], capture_output=True, text=True)
    assert died.returncode == -9, died.stderr
    assert holder(tmp_path)["mlflow_run_id"] == "abc123"  # the lock itself was released by the kernel

    with workspace_lock(tmp_path, "miniaturize stage ingest"):  # a command that settles nothing
        assert holder(tmp_path)["what"] == "miniaturize stage ingest"
    with workspace_lock(tmp_path, "miniaturize run"):
        [(path, killed)] = killed_runs(tmp_path)
        assert killed["what"] == "miniaturize run nightly" and killed["mlflow_run_id"] == "abc123"
        assert killed["prefect_flow_run_id"] == "0b6f7d2e-3c1a-4f7e-9d55-2a8c6e1b4f90"
        settled(path)
    assert killed_runs(tmp_path) == [] and holder(tmp_path) == {}
