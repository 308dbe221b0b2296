"""MLflow behind the components' `Tracker` interface: one parent run per pipeline, one child run per stage.

Runs are addressed by id through `MlflowClient` (not the fluent active-run stack), so stages that Prefect
runs in worker threads log to the right run. The store is `MLFLOW_TRACKING_URI` when set, else
`sqlite:///<root>/mlflow.db` with artifacts under `<root>/mlruns`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

EXPERIMENT = "miniaturize"


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / 'mlflow.db').resolve()}"


def client(root: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(root))


def experiment_id(mlflow_client, root: Path, name: str = EXPERIMENT) -> str:
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None if os.environ.get("MLFLOW_TRACKING_URI") else (root / "mlruns").resolve().as_uri()
    return mlflow_client.create_experiment(name, artifact_location=location)


class MlflowTracker:
    """Logs to one MLflow run by id. Values are flattened to what MLflow accepts."""

    def __init__(self, mlflow_client, run_id: str):
        self.client = mlflow_client
        self.run_id = run_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in flatten(metrics).items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def start_run(mlflow_client, experiment: str, name: str, parent_run_id: str | None = None,
              tags: dict[str, str] | None = None) -> str:
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    return mlflow_client.create_run(experiment, tags=all_tags, run_name=name).info.run_id


def end_run(mlflow_client, run_id: str, ok: bool) -> None:
    mlflow_client.set_terminated(run_id, status="FINISHED" if ok else "FAILED")
