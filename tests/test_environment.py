"""The suite does not depend on the caller's shell: with a tracking server, a Prefect API and an online hub
named in the environment (as on many MLOps machines and CI runners), the tests still log to their own
stores. `tests/conftest.py` pins the environment when it loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

AMBIENT = {
    "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
    "MLFLOW_EXPERIMENT_NAME": "someone-elses",
    "PREFECT_API_URL": "http://127.0.0.1:9/api",
    "HF_HUB_OFFLINE": "0",
    "HF_ENDPOINT": "http://127.0.0.1:9",
}


def test_the_tests_see_their_own_tracking_and_an_offline_hub(tmp_path):
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "PREFECT_API_URL", "HF_ENDPOINT"):
        assert key not in os.environ, key
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    from flows.tracking import tracking_uri

    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"


def test_a_caller_environment_naming_other_servers_changes_nothing():
    here = Path(__file__)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:xdist",
            "-p",
            "no:cacheprovider",
            f"{here}::test_the_tests_see_their_own_tracking_and_an_offline_hub",
        ],
        cwd=here.parents[1],
        env=os.environ | AMBIENT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
