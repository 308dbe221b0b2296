"""A crash never leaves a half-written output that a later stage or run takes for complete.

Stages write into `.miniaturize/<task>/staging/<stage>/`, their outputs are renamed into place once they finish,
and the stage's record (what marks it complete) is written last. Killed with SIGKILL at any point, a re-run
resumes from the last completed stage. Nor does a killed run leave ghosts: its temporary Prefect API dies with
it, and the next run marks its Prefect flow run Crashed and its open MLflow runs KILLED.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from flows import cache
from flows.lock import holder, killed_runs
from flows.tasks.classification import TASK as CLASSIFICATION
from tests.flows.conftest import BIN
from tests.reliability.conftest import run_pipeline


def stage_outputs(project: Path) -> dict[str, str]:
    return {path.name: cache.tree_sha256(path) for path in (project / "models").iterdir() if path.name != "base"}


def test_a_stage_that_fails_half_way_keeps_the_previous_outputs_and_is_not_recorded(
    tiny_project, prefect_api, monkeypatch
):
    from dataclasses import replace

    from flows.tasks.classification import STAGES

    run_pipeline(tiny_project, prefect_api, until="distill")
    before = cache.tree_sha256(tiny_project / "models" / "student")
    real = STAGES["distill"]

    def dies_half_way(p, ws, tracker):
        ws.student.mkdir(parents=True)
        (ws.student / "model.safetensors").write_bytes(b"half a model")
        raise RuntimeError("disk on fire")

    monkeypatch.setitem(STAGES, "distill", replace(real, run=dies_half_way))
    with pytest.raises(RuntimeError, match="disk on fire"):
        run_pipeline(tiny_project, prefect_api, until="distill", force=True)
    assert cache.tree_sha256(tiny_project / "models" / "student") == before
    assert not cache.StageCache(CLASSIFICATION.workspace(tiny_project).state).path("distill").exists()
    assert (
        CLASSIFICATION.workspace(tiny_project).state / "failed" / "distill" / "models" / "student" / "model.safetensors"
    ).exists()
    monkeypatch.setitem(STAGES, "distill", real)
    resumed = run_pipeline(tiny_project, prefect_api, until="distill")
    assert [name for name, s in resumed["stages"].items() if not s["cache_hit"]] == ["distill"]


def start_cli(project: Path, *args: str, env: dict[str, str | None]) -> subprocess.Popen:
    """`miniaturize run` in its own process group, with `env` on top of this one's (None: unset)."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "MLFLOW_TRACKING_URI": None} | env
    env = {key: value for key, value in env.items() if value is not None}
    return subprocess.Popen(
        [str(BIN / "miniaturize"), "run", *args],
        cwd=project,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def read_until(proc: subprocess.Popen, line_start: str, timeout: float = 300) -> str:
    """What the run printed up to the first line starting with `line_start`."""
    seen, deadline = [], time.time() + timeout
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(line_start):
            return "".join(seen)
        assert time.time() < deadline, "".join(seen)[-3000:]
    pytest.fail(f"the run ended before {line_start!r}:\n{''.join(seen)[-3000:]}")


def kill_run_only(proc: subprocess.Popen) -> int:
    """SIGKILL the run's process, not its children (as the OOM killer or `kill -9 PID` would); returns the pid
    of the temporary Prefect API it had started."""
    server = next(pid for pid in children(proc.pid) if b"uvicorn" in Path(f"/proc/{pid}/cmdline").read_bytes())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return server


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid:
            found.append(int(stat.parent.name))
    return found


def assert_ends(server: int, within_seconds: float = 30) -> None:
    deadline = time.time() + within_seconds
    while time.time() < deadline:
        try:
            state = Path(f"/proc/{server}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state in ("Z", "X"):  # exited; only its exit status is left for whoever reaps it
            return
        time.sleep(0.2)
    os.kill(server, signal.SIGKILL)
    pytest.fail("the temporary Prefect API outlived the run that started it")


def flow_run_state(api: str, flow_run_id: str) -> str:
    with urllib.request.urlopen(f"{api}/flow_runs/{flow_run_id}", timeout=10) as answer:
        return json.load(answer)["state"]["type"]


def test_a_stage_that_returns_without_writing_an_output_fails_and_is_not_recorded(
    tiny_project, prefect_api, monkeypatch
):
    from dataclasses import replace

    from components.kit.tracking import StageResult
    from flows.pipeline import StageOutputMissing
    from flows.tasks.classification import STAGES

    run_pipeline(tiny_project, prefect_api, until="ingest")
    monkeypatch.setitem(STAGES, "validate", replace(STAGES["validate"], run=lambda p, ws, tracker: StageResult()))
    with pytest.raises(StageOutputMissing, match="validate stage finished without writing validation"):
        run_pipeline(tiny_project, prefect_api, until="validate", force=True)
    assert not cache.StageCache(CLASSIFICATION.workspace(tiny_project).state).path("validate").exists()


def test_sigkill_during_a_stage_resumes_from_the_last_completed_stage_and_leaves_no_ghosts(tiny_project, prefect_api):
    from mlflow.tracking import MlflowClient

    store = cache.StageCache(CLASSIFICATION.workspace(tiny_project).state)
    mlflow = MlflowClient(f"sqlite:///{tiny_project / 'mlflow.db'}")
    # The killed runs have no PREFECT_API_URL: each starts a temporary Prefect API, both on one database.
    own_api = {"PREFECT_HOME": str(tiny_project.parent / "prefect-home"), "PREFECT_API_URL": None}

    # First run: killed while the student is being distilled. Its temporary Prefect API dies with it. Twenty
    # epochs keep the tiny student distilling for seconds (one epoch can end within the second the test waits).
    first = start_cli(
        tiny_project, "--until", "prune", "--set", "distill.epochs=20", "--set", "distill.patience=20", env=own_api
    )
    printed = read_until(first, "[distill] started")
    time.sleep(1.0)
    assert_ends(kill_run_only(first))
    assert "[finetune] finished" in printed
    assert [s for s in ("ingest", "validate", "finetune", "distill") if store.path(s).exists()] == [
        "ingest",
        "validate",
        "finetune",
    ]
    assert not (tiny_project / "models" / "student").exists(), "a half-distilled student is in place"
    teacher = cache.tree_sha256(tiny_project / "models" / "teacher")
    killed = holder(tiny_project)  # what the killed run recorded for the next one

    # Second run: forced, killed while the teacher is being trained again. It first settles the first run:
    # its flow run Crashed, its open MLflow runs (the pipeline and distill) KILLED. The complete teacher of the
    # first run stays in place, with its record: the forced run had not finished anything yet.
    # Twenty epochs keep the tiny teacher training past the two seconds the test waits on a fast machine.
    teacher_epochs = ("--set", "teacher.epochs=20", "--set", "teacher.patience=20")
    second = start_cli(tiny_project, "--until", "prune", "--force", *teacher_epochs, env=own_api)
    printed = read_until(second, "[finetune] started")
    assert f"Prefect flow run {killed['prefect_flow_run_id']} (" in printed and "marked CRASHED" in printed
    assert f"MLflow run {killed['mlflow_run_id']} marked KILLED" in printed
    assert flow_run_state(holder(tiny_project)["prefect_api"], killed["prefect_flow_run_id"]) == "CRASHED"
    time.sleep(2.0)
    assert_ends(kill_run_only(second))
    assert cache.tree_sha256(tiny_project / "models" / "teacher") == teacher
    assert mlflow.get_run(killed["mlflow_run_id"]).info.status == "KILLED"
    first_runs = mlflow.search_runs(
        [mlflow.get_run(killed["mlflow_run_id"]).info.experiment_id],
        f"tags.mlflow.parentRunId = '{killed['mlflow_run_id']}'",
    )
    assert {r.info.run_name: r.info.status for r in first_runs} == {
        "ingest": "FINISHED",
        "validate": "FINISHED",
        "finetune": "FINISHED",
        "distill": "KILLED",
    }
    killed = holder(tiny_project)

    # The re-run resumes: finished stages are skipped, the killed one and the rest run. It marks the second
    # run's MLflow runs KILLED (its flow run is on the other Prefect API, and says so).
    resumed = run_pipeline(tiny_project, prefect_api, until="prune")
    ran = [name for name, stage in resumed["stages"].items() if not stage["cache_hit"]]
    assert ran == ["distill", "prune"], ran
    record = json.loads(store.path("prune").read_text())
    assert record["outputs"]["models/pruned"] == cache.tree_sha256(tiny_project / "models" / "pruned")
    assert mlflow.get_run(killed["mlflow_run_id"]).info.status == "KILLED"
    assert not holder(tiny_project) and not killed_runs(tiny_project), "records left for a later run"
