"""A tiny project for the fault-injection tests: the whole pipeline (every stage, real components) on 120
generated reviews and the 2-layer random BERT of tests/conftest.py, so a full run takes seconds, not
minutes. `run_pipeline` runs the flow in this process against the session's Prefect server; `tiny_run` is one
complete run (with one extra seed) shared by the tests that only read it; `mlflow_server` is a real tracking server that the
outage tests stop and restart."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import make_frame
from tests.flows.conftest import BIN, make_project

TINY = {
    "data.labels": ["negative", "positive"],
    "teacher.epochs": 1,
    "teacher.batch_size": 8,
    "teacher.lr": 1.0e-3,
    "distill.layers": [0, 1],
    "distill.epochs": 1,
    "distill.batch_size": 8,
    "distill.ablation": False,
    "prune.epochs": 1,
    "prune.batch_size": 8,
    "prune.steps": 1,
    "prune.importance_batches": 2,
    "quantize.candidates": ["int8"],
    "quantize.per_channel": [False],
    "quantize.latency_sentences": 10,
    "quantize.calibration_sentences": 8,
    "seeds.extra": [],
    "evaluate.batch1_calls": 5,
    "evaluate.batch32_calls": 2,
    "evaluate.rss_sentences": 0,  # no peak-RSS probes (a fresh process each); the smoke e2e run measures them
    "evaluate.warmup": 1,
    "retries.stage_delay_seconds": 0,
    "retries.tracking_attempts": 3,
    "retries.tracking_backoff_seconds": 0.2,
}


def make_tiny_project(dest: Path, teacher_dir: Path, overrides: dict | None = None) -> Path:
    """A project whose params.yaml runs the whole pipeline on tiny data with a tiny teacher (inside it; the
    paths are absolute because the flow runs in this process, whose working directory is elsewhere), with
    `overrides` ({"dotted.key": value}) on top."""
    dest = dest.resolve()
    paths = {"data.source": str(dest / "data" / "reviews.csv"), "teacher.model": str(dest / "models" / "base")}
    project = make_project(dest, TINY | paths | (overrides or {}))
    shutil.copytree(teacher_dir, project / "models" / "base")
    (project / "data").mkdir(exist_ok=True)
    make_frame(60).to_csv(project / "data" / "reviews.csv", index=False)
    return project


def load(project: Path, *overrides: str):
    from components.config import load_params

    return load_params(project / "params.yaml", None, list(overrides))


def run_pipeline(project: Path, prefect_api: str, *overrides: str, **options) -> dict:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.pipeline import pipeline

    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        return pipeline(load(project, *overrides), root=str(project), **options)


@pytest.fixture
def tiny_project(tmp_path, tiny_model_dir, monkeypatch) -> Path:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return make_tiny_project(tmp_path / "project", tiny_model_dir)


# Credentials a user would have in the environment; no file, log or MLflow record may ever hold them.
PLANTED_SECRETS = {
    "MLFLOW_TRACKING_PASSWORD": "planted-mlflow-password-7f3a9c",
    "AWS_SECRET_ACCESS_KEY": "planted-aws-secret-2b8e41d0",
    "HF_TOKEN": "hf_plantedtoken5d61e0c9a4",
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir, prefect_api) -> dict:
    """One complete run of the tiny project (every stage, registered as champion) with credentials planted in
    the environment; its printed output is kept for the tests that read it."""
    import contextlib
    import io

    # One extra seed: the seeds stage re-trains the student chain and the report gets the seed spread.
    project = make_tiny_project(tmp_path_factory.mktemp("tiny_run") / "project", tiny_model_dir, {"seeds.extra": [14]})
    saved = {k: os.environ.get(k) for k in [*PLANTED_SECRETS, "MLFLOW_TRACKING_URI"]}
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.update(PLANTED_SECRETS)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            outcome = run_pipeline(project, prefect_api)
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    return {"project": project, "outcome": outcome, "printed": printed.getvalue()}


class MlflowServer:
    """`mlflow server` on loopback with a SQLite store: started, stopped and restarted on the same port and
    store, as a tracking server that goes down and comes back."""

    def __init__(self, workdir: Path):
        from tests.conftest import free_port

        self.workdir, self.port = workdir, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self) -> None:
        from tests.integration.conftest import wait_healthy

        env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
        log = self.workdir / "server.log"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    str(BIN / "mlflow"),
                    "server",
                    "--backend-store-uri",
                    f"sqlite:///{self.workdir / 'mlflow.db'}",
                    "--artifacts-destination",
                    str(self.workdir / "artifacts"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    "1",
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_healthy(f"{self.uri}/health", self.proc, log, seconds=120)

    def stop(self) -> None:
        from tests.integration.conftest import stop_process_group

        if self.proc is not None:
            stop_process_group(self.proc)
            self.proc = None


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path / "mlflow-server")
    server.workdir.mkdir()
    yield server
    server.stop()
