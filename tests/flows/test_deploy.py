"""Scheduling: `miniaturize deploy` refuses bad params, schedules and a missing server; the scheduled flow
reads params at run time and records outputs with DVC. The deployment itself, served against a real
Prefect server with a triggered run, is tested at the end of test_pipeline_e2e.py on the smoke project."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.flows.conftest import BIN, REPO


def cli_env(**extra: str) -> dict:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"} | extra
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


@pytest.mark.parametrize("args, api, needle", [
    (["--set", "distill.alphaa=0.3"], "http://127.0.0.1:9/api", "unknown key 'distill.alphaa'"),
    (["--cron", "0 3 * *"], "http://127.0.0.1:9/api", "Invalid cron string"),
    (["--timezone", "Mars/Olympus"], "http://127.0.0.1:9/api", "Invalid timezone"),
    ([], None, "make serve"),
])
def test_deploy_refuses_bad_params_schedule_or_missing_server(tmp_path, args, api, needle):
    env = cli_env(PREFECT_HOME=str(tmp_path / "prefect_home"))  # no profile that could hold an API URL
    env.pop("PREFECT_API_URL", None)
    if api:
        env["PREFECT_API_URL"] = api
    done = subprocess.run([str(BIN / "miniaturize"), "deploy", "--params", str(REPO / "params.yaml"), *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert needle in done.stderr


@pytest.mark.parametrize("overrides, until, recorded", [([], None, True), (["distill.alpha=0.6"], None, False),
                                                       ([], "prune", False)])
def test_scheduled_run_loads_params_runs_the_pipeline_and_records_plain_complete_runs_only(
        tmp_path, prefect_api, monkeypatch, overrides, until, recorded):
    """The flow's own logic, with the pipeline replaced by a stub: params read at run time, DVC only for
    params.yaml as written and a run to the end, a short JSON-able summary."""
    import shutil

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import flows.pipeline
    import flows.versioning
    from flows.deploy import scheduled_pipeline

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    seen, committed = {}, []
    registration = {"model_name": "m", "version": "3", "alias": "champion", "gate_passed": True,
                    "model_uri": "models:/m/3", "failed_checks": [], "gate": {"checks": {}}}

    def stub_pipeline(params, root, run_name, until=None):
        seen.update(alpha=params.distill.alpha, root=root, run_name=run_name, until=until)
        return {"parent_run_id": "p1", "experiment_id": "1", "tracking_uri": "sqlite:///x.db",
                "registration": None if until else registration,
                "stages": {} if until else {"register": {"cache_hit": False}}}

    monkeypatch.setattr(flows.pipeline, "pipeline", stub_pipeline)
    monkeypatch.setattr(flows.versioning, "commit_outputs", lambda root, stages=None: committed.append(root) or (True, "DVC: ok"))
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        summary = scheduled_pipeline(root=str(tmp_path), overrides=overrides, until=until)
        # Send this process's run logs and events now, while the session's server still answers: left for
        # interpreter exit, they would retry against a stopped server for over a minute.
        APILogWorker.drain_all(timeout=30)
        EventsWorker.drain_all(timeout=30)
    assert seen["alpha"] == (0.6 if overrides else 0.5) and seen["root"] == str(tmp_path)
    assert seen["run_name"].startswith("scheduled-") and seen["until"] == until
    assert committed == ([tmp_path] if recorded else [])
    if until:
        assert summary["registration"] is None and summary["stopped_after"] == until
        assert summary["dvc"] == f"DVC: not recorded (the run stopped after {until})"
        return
    assert summary["registration"] == {k: registration[k] for k in ("model_name", "version", "alias", "gate_passed",
                                                                      "model_uri")}
    assert summary["parent_run_id"] == "p1" and summary["dvc"] == ("DVC: ok" if recorded else
                                                                   "DVC: not recorded (this deployment uses a profile or overrides)")
    json.dumps(summary)
