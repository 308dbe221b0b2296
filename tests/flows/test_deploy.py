"""Scheduling: `miniaturize deploy` refuses bad params, schedules and a missing server; the scheduled flow
reads params at run time and records outputs with DVC; a deployment is bound to the workspace it was
deployed for, and a run that names another folder is refused. A served deployment whose triggered run
completes the smoke project is tested at the end of test_pipeline_e2e.py."""

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


@pytest.mark.parametrize(
    "args, api, needle",
    [
        (["--set", "distill.alphaa=0.3"], "http://127.0.0.1:9/api", "unknown key 'distill.alphaa'"),
        (["--cron", "0 3 * *"], "http://127.0.0.1:9/api", "Invalid cron string"),
        (["--timezone", "Mars/Olympus"], "http://127.0.0.1:9/api", "Invalid timezone"),
        ([], None, "make serve"),
    ],
)
def test_deploy_refuses_bad_params_schedule_or_missing_server(tmp_path, args, api, needle):
    env = cli_env(PREFECT_HOME=str(tmp_path / "prefect_home"))  # no profile that could hold an API URL
    env.pop("PREFECT_API_URL", None)
    if api:
        env["PREFECT_API_URL"] = api
    done = subprocess.run(
        [str(BIN / "miniaturize"), "deploy", "--params", str(REPO / "params.yaml"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert needle in done.stderr


@pytest.mark.parametrize(
    "overrides, until, recorded", [([], None, True), (["distill.alpha=0.6"], None, False), ([], "prune", False)]
)
def test_scheduled_run_loads_params_runs_the_pipeline_and_records_plain_complete_runs_only(
    tmp_path, prefect_api, monkeypatch, overrides, until, recorded
):
    """The flow's own logic, with the pipeline replaced by a stub: params read at run time, DVC only for
    params.yaml as written and a run to the end, a short JSON-able summary."""
    import shutil

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import flows.pipeline
    import flows.versioning
    from flows.deploy import BoundWorkspace, workspace_pipeline

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    seen, committed = {}, []
    registration = {
        "model_name": "m",
        "version": "3",
        "alias": "champion",
        "gate_passed": True,
        "model_uri": "models:/m/3",
        "failed_checks": [],
        "gate": {"checks": {}},
    }

    def stub_pipeline(params, root, run_name, until=None):
        seen.update(alpha=params.distill.alpha, root=root, run_name=run_name, until=until)
        return {
            "parent_run_id": "p1",
            "experiment_id": "1",
            "tracking_uri": "sqlite:///x.db",
            "registration": None if until else registration,
            "stages": {} if until else {"register": {"cache_hit": False}},
        }

    monkeypatch.setattr(flows.pipeline, "pipeline", stub_pipeline)
    monkeypatch.setattr(
        flows.versioning,
        "commit_outputs",
        lambda root, stages=None, ran=None: committed.append(root) or (True, "DVC: ok"),
    )
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        bound = workspace_pipeline(BoundWorkspace(str(tmp_path), overrides=tuple(overrides)))
        summary = bound(until=until)
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
    assert summary["registration"] == {
        k: registration[k] for k in ("model_name", "version", "alias", "gate_passed", "model_uri")
    }
    assert summary["parent_run_id"] == "p1" and summary["dvc"] == (
        "DVC: ok" if recorded else "DVC: not recorded (this deployment uses a profile or overrides)"
    )
    json.dumps(summary)


def test_an_update_deployment_runs_an_update_with_its_file_and_returns_at_once_when_nothing_is_new(
    tmp_path, prefect_api, monkeypatch
):
    """`miniaturize deploy --update FILE`: each run is an incremental update with FILE (the update flow replaced
    by a stub here; tests/flows/test_update_e2e.py runs the real one), and a run whose file the champion has
    learned says so and changes nothing."""
    import shutil

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import flows.update
    from flows.deploy import BoundWorkspace, build_deployment, workspace_pipeline

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    calls = []

    def stub_update(params, data, root, run_name):
        calls.append((data, root, run_name))
        new = len(calls) == 1
        return {
            "skipped": not new,
            "version": "4",
            "model_name": "m",
            "alias": "champion",
            "reason": "ok",
            "dvc": "DVC: ok",
        }

    monkeypatch.setattr(flows.update, "update", stub_update)
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        bound = workspace_pipeline(BoundWorkspace(str(tmp_path), update="data/incoming.csv"))
        first, second = bound(), bound()
        APILogWorker.drain_all(timeout=30)
        EventsWorker.drain_all(timeout=30)
    assert calls[0][0] == str(tmp_path / "data" / "incoming.csv") and calls[0][1] == str(tmp_path)
    assert calls[0][2].startswith("scheduled-update-")
    assert first == {
        "skipped": False,
        "model_name": "m",
        "version": "4",
        "alias": "champion",
        "reason": "ok",
        "dvc": "DVC: ok",
    }
    assert second == {"skipped": True, "version": "4"}
    deployment = build_deployment(name="weekly", root=tmp_path, update="data/incoming.csv")
    assert "incremental update" in deployment.options["description"]
    assert "updates with data/incoming.csv" in deployment.options["description"]
    with pytest.raises(ValueError, match="--until applies to pipeline runs only"):
        build_deployment(root=tmp_path, update="data/incoming.csv", until="prune")


def test_deployment_is_bound_to_its_workspace_and_takes_only_until(tmp_path, prefect_api, monkeypatch):
    """The project folder, params file, profile and overrides are fixed at deploy time: the deployment's only
    run parameter is `until`, and a run created with `root` (as the UI's custom run or the API allow) is
    refused by the flow engine before the workspace code runs."""
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.events.worker import EventsWorker
    from prefect.exceptions import ParameterBindError, SignatureMismatchError
    from prefect.flow_engine import run_flow
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import flows.deploy
    from flows.deploy import BoundWorkspace, build_deployment, scheduled_pipeline

    project = tmp_path / "project"
    project.mkdir()
    deployment = build_deployment(
        "bound", root=project, params_file=project / "params.yaml", overrides=["distill.alpha=0.6"], until="prune"
    )
    registered = deployment.to_deployment()
    assert registered.parameters == {"until": "prune"} and registered.enforce_parameter_schema
    assert set(registered._parameter_openapi_schema.properties) == {"until"}
    assert registered.entrypoint == "flows.deploy.scheduled_pipeline"
    assert str(project / "params.yaml") in registered.description
    # The prefect.yaml deployments' flow is bound the same way, to the working directory its pull step sets.
    assert set(scheduled_pipeline.parameters.properties) == {"until"}

    ran = []
    monkeypatch.setattr(flows.deploy, "run_in_workspace", lambda workspace, until=None: ran.append(workspace) or {})
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        with pytest.raises(ParameterBindError, match="root"):
            deployment.flow(root=str(tmp_path / "elsewhere"))
        deployment.flow(until="prune")
        assert ran == [BoundWorkspace(str(project.resolve()), "params.yaml", None, ("distill.alpha=0.6",))]

        ran.clear()
        registered.apply()
        flow_run = run_deployment(
            f"{flows.deploy.FLOW_NAME}/bound",
            timeout=0,
            parameters={"root": str(tmp_path / "elsewhere"), "params_file": "/etc/passwd"},
        )
        # What the serving process does with each run (in a subprocess): the engine checks the parameters
        # against the flow's signature first.
        with pytest.raises(SignatureMismatchError, match="expects parameters \\['until'\\]"):
            run_flow(deployment.flow, flow_run=flow_run, return_type="state")
        assert ran == []
        # A wrong type for `until` is refused by the server itself (the deployment enforces its schema).
        with pytest.raises(Exception, match="409"):
            run_deployment(f"{flows.deploy.FLOW_NAME}/bound", timeout=0, parameters={"until": 3})
        with get_client(sync_client=True) as client:
            client.delete_deployment(client.read_deployment_by_name(f"{flows.deploy.FLOW_NAME}/bound").id)
        APILogWorker.drain_all(timeout=30)  # while the session's server still answers (see the test above)
        EventsWorker.drain_all(timeout=30)


def test_served_deployment_runs_in_the_folder_it_was_deployed_for(tmp_path, prefect_api):
    """`miniaturize deploy --root DIR` from another folder: a triggered run works in DIR (its params file,
    removed after deploying, is the one the run looks for), and a run given another `root` crashes before it
    reads anything."""
    import shutil
    import time

    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    name = "miniaturize-scheduled/bound-served"
    log = tmp_path / "serve.log"
    env = cli_env(PREFECT_API_URL=prefect_api)
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(BIN / "miniaturize"), "deploy", "--name", "bound-served", "--root", str(project)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with temporary_settings(updates={PREFECT_API_URL: prefect_api}), get_client(sync_client=True) as client:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, f"deploy exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
                try:
                    deployment = client.read_deployment_by_name(name)
                    break
                except ObjectNotFound:
                    assert time.monotonic() < deadline, f"{name} not registered in 120 s:\n{log.read_text()[-4000:]}"
                    time.sleep(1)
            assert deployment.parameters == {"until": None}
            (project / "params.yaml").unlink()  # a run that reaches the workspace now stops at once, naming it

            refused = run_deployment(name, parameters={"root": str(elsewhere)}, timeout=120, poll_interval=1)
            assert refused.state.is_crashed() or refused.state.is_failed(), refused.state
            bound = run_deployment(name, timeout=120, poll_interval=1)
            assert bound.state.is_failed(), bound.state
            assert f"params file {project / 'params.yaml'} does not exist" in bound.state.message, bound.state.message
            proc.terminate()
            assert proc.wait(timeout=60) is not None
            client.delete_deployment(deployment.id)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert "Function expects parameters ['until']" in out, out[-4000:]
    assert list(elsewhere.iterdir()) == []
