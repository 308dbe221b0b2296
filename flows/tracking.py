"""MLflow behind the components' `Tracker` interface: one parent run per pipeline, one child run per stage.

Runs are addressed by id through `MlflowClient` (not the fluent active-run stack), so stages that Prefect
runs in worker threads log to the right run. The store is `MLFLOW_TRACKING_URI` when set, else
`sqlite:///<root>/mlflow.db` with artifacts under `<root>/mlruns`.

The tracking server may be down or restarting. A client call that is safe to repeat is retried on transient
errors with exponential backoff (`flows.retries`, `retries.tracking_*` in the params), then fails with
`TrackingUnavailable`; one that is not is sent once, since a timeout does not say whether the server did it.
Run and experiment creation are made safe to repeat: a later attempt first looks up what an unanswered one
may have created. A stage already computing does not lose its work: once MLflow stops answering, its
tracker keeps the params, metrics, tags and artifacts it is given in a journal on disk
(`.miniaturize/pending/<run id>/`), and the next run replays them into the same MLflow run. Values that
look like credentials are masked (`components.kit.secrets`) before anything is sent.

Each data split a stage reads (the parquet files of its input folders, `data/prepared/train.parquet`, ...) is
logged as one of its run's dataset inputs (`MlflowTracker.log_datasets`: the Datasets panel of the run), its
digest the start of the file's sha256, its context the split's name; the same journal keeps them while MLflow
is away, and a dataset that cannot be logged never fails its stage.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from components.kit.hashing import file_sha256
from components.kit.secrets import redact
from flows.retries import RetryPolicy, TrackingUnavailable, send_once, short, with_retries

EXPERIMENT = "miniaturize"
# The tag that makes run creation idempotent: a key chosen before the first attempt, looked up before another.
REQUEST_ID = "miniaturize.request_id"
# MLflow's own HTTP retries (7 by default, backoff factor 2) would hold a call for minutes, and would send a
# create again after a timeout; the policy here decides what is retried and how long to wait, and says so.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / 'mlflow.db').resolve()}"


# The input tag MLflow's Datasets panel shows as a dataset's context; ours is the split's name (train, test, ...).
DATASET_CONTEXT = "mlflow.data.context"
# MLflow stores at most 36 characters of a dataset's digest: a split's is the start of its file's sha256.
DIGEST_CHARS = 32

# Calls whose effect is the same however many times the server receives them, so a timeout can be retried:
# reads; updates by key (tags, params of the same value, an alias, a run's end status, a version's
# description); dataset inputs (the store keeps one per run, dataset name and digest); metrics in a batch,
# whose timestamp and step are fixed before the first attempt (the store keeps one row per key, value,
# timestamp and step); and artifacts: the same file sent again to the same artifact path replaces itself,
# byte for byte, and lists once. Not here: `log_metric` stamps the time at each attempt, and a delete sent
# twice fails the second time (RESOURCE_DOES_NOT_EXIST).
IDEMPOTENT = frozenset(
    {
        "get_run",
        "get_experiment",
        "get_experiment_by_name",
        "get_metric_history",
        "get_parent_run",
        "search_runs",
        "search_experiments",
        "list_artifacts",
        "download_artifacts",
        "get_registered_model",
        "get_model_version",
        "get_model_version_by_alias",
        "get_latest_versions",
        "search_registered_models",
        "search_model_versions",
        "get_model_version_download_uri",
        "log_batch",
        "log_param",
        "set_tag",
        "set_experiment_tag",
        "set_terminated",
        "update_run",
        "log_artifact",
        "log_artifacts",
        "log_text",
        "log_dict",
        "set_registered_model_alias",
        "set_model_version_tag",
        "set_registered_model_tag",
        "update_model_version",
        "log_inputs",
    }
)


class ResilientClient:
    """An `MlflowClient` whose calls are retried on transient errors when that cannot do them twice (see
    `IDEMPOTENT` and `flows.retries`); `create_run` and `create_experiment` are made safe to retry, and any
    other call is sent once (`TrackingUnavailable` if it goes unanswered)."""

    def __init__(self, inner, policy: RetryPolicy):
        self._inner, self.policy = inner, policy

    @property
    def where(self) -> str:
        return f"MLflow at {redact(self._inner.tracking_uri)}"

    def __getattr__(self, name: str):
        attr = getattr(self._inner, name)
        if not callable(attr) or name.startswith("_"):
            return attr

        def call(*args, **kwargs):
            if name in IDEMPOTENT:
                return with_retries(lambda: attr(*args, **kwargs), self.policy, name, self.where)
            return send_once(lambda: attr(*args, **kwargs), name, self.where)

        return call

    def create_run(
        self,
        experiment_id: str,
        start_time: int | None = None,
        tags: dict[str, Any] | None = None,
        run_name: str | None = None,
    ):
        """One run however many attempts it takes: the run carries a key (`REQUEST_ID`) chosen before the
        first attempt, and an attempt after one that went unanswered first looks for a run with that key,
        which the server may have created without its answer arriving."""
        from mlflow.entities import ViewType

        key = uuid.uuid4().hex
        tags = dict(tags or {}) | {REQUEST_ID: key}
        start_time = start_time or int(time.time() * 1000)
        attempts = 0

        def attempt():
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                found = self._inner.search_runs(
                    [experiment_id],
                    filter_string=f"tags.`{REQUEST_ID}` = '{key}'",
                    run_view_type=ViewType.ALL,
                    max_results=1,
                )
                if found:
                    return found[0]
            return self._inner.create_run(experiment_id, start_time=start_time, tags=tags, run_name=run_name)

        return with_retries(attempt, self.policy, "create_run", self.where)

    def create_experiment(
        self, name: str, artifact_location: str | None = None, tags: dict[str, Any] | None = None
    ) -> str:
        """One experiment however many attempts it takes: names are unique, so an attempt after one that went
        unanswered first looks the name up."""
        attempts = 0

        def attempt():
            nonlocal attempts
            attempts += 1
            found = self._inner.get_experiment_by_name(name) if attempts > 1 else None
            if found is not None:
                return found.experiment_id
            return self._inner.create_experiment(name, artifact_location=artifact_location, tags=tags)

        return with_retries(attempt, self.policy, "create_experiment", self.where)


def client(root: Path, policy: RetryPolicy | None = None) -> ResilientClient:
    from mlflow.tracking import MlflowClient

    return ResilientClient(MlflowClient(tracking_uri=tracking_uri(root)), policy or RetryPolicy())


def experiment_id(mlflow_client, root: Path, name: str = EXPERIMENT) -> str:
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None if os.environ.get("MLFLOW_TRACKING_URI") else (root / "mlruns").resolve().as_uri()
    return mlflow_client.create_experiment(name, artifact_location=location)


def pending_dir(root: Path, run_id: str) -> Path:
    return root / ".miniaturize" / "pending" / run_id


class MlflowTracker:
    """Logs to one MLflow run by id. Values are flattened to what MLflow accepts.

    With `root`, a call that fails for good (MLflow unreachable after every retry) does not fail the
    stage: that call and every later one go to `journal` (artifacts copied under `pending_dir`), for
    `replay` once MLflow answers again."""

    def __init__(self, mlflow_client, run_id: str, root: Path | None = None):
        self.client = mlflow_client
        self.run_id = run_id
        self.root = root
        self.journal: list[dict] = []

    def _send(self, entry: dict) -> None:
        if not self.journal:
            try:
                send(self.client, self.run_id, entry)
                return
            except TrackingUnavailable as err:
                if self.root is None:
                    raise
                print(
                    f"  tracking: {err}; the stage goes on and its logs are kept in "
                    f"{pending_dir(self.root, self.run_id)} for the next run",
                    flush=True,
                )
        if entry["kind"] == "artifact":  # a copy: the file may be temporary, or replaced before the replay
            source = Path(entry["path"])
            keep = pending_dir(self.root, self.run_id) / f"{len(self.journal):04d}" / source.name
            keep.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, keep)
            entry = entry | {"path": str(keep)}
        self.journal.append(entry)

    def log_params(self, params: dict[str, Any]) -> None:
        self._send({"kind": "params", "items": {k: redact(str(v))[:6000] for k, v in flatten(params).items()}})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        items = {
            k: float(v) for k, v in flatten(metrics).items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if items:
            self._send({"kind": "metrics", "items": items, "step": step or 0, "at": int(time.time() * 1000)})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._send({"kind": "artifact", "path": str(path), "artifact_path": artifact_path})

    def set_tags(self, tags: dict[str, str]) -> None:
        self._send({"kind": "tags", "items": {k: redact(str(v)) for k, v in tags.items()}})

    def log_datasets(self, paths) -> None:
        """Every data split among `paths` (a stage's input files and folders: `split_files`) as a dataset input
        of the run. Logging is a record of the stage, not part of it: a split that cannot be read or logged is
        named in one printed line and the stage goes on."""
        try:
            items = [dataset_entry(path, self.root) for path in split_files(paths)]
            if items:
                self._send({"kind": "datasets", "items": items})
        except Exception as err:  # noqa: BLE001 - see the docstring
            print(f"  tracking: the stage's data splits are not logged as datasets ({short(err, 160)})", flush=True)


def split_files(paths) -> list[Path]:
    """The data splits among a stage's inputs: each parquet file, and each parquet file directly inside an input
    folder (data/prepared/train.parquet, validation.parquet, ...), in name order."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(path.glob("*.parquet"))
        elif path.suffix == ".parquet" and path.is_file():
            found.append(path)
    return found


def dataset_entry(path: Path, root: Path | None = None) -> dict:
    """One split file as the fields of an MLflow dataset (name, digest, source, schema, profile) and its context,
    plain strings a journal can keep: named by its path under `root`, its digest the start of its sha256 (the
    whole sha256 is in the profile), its schema and row count read by `mlflow.data.from_pandas`, a `label`
    column as its targets."""
    import mlflow.data
    import pandas as pd
    from mlflow.data.sources import LocalArtifactDatasetSource

    path = Path(path).resolve()
    sha256 = file_sha256(path)
    frame = pd.read_parquet(path)
    name = path.relative_to(root.resolve()).as_posix() if root and path.is_relative_to(root.resolve()) else path.name
    dataset = mlflow.data.from_pandas(
        frame,
        source=LocalArtifactDatasetSource(path.as_uri()),
        name=name,
        digest=sha256[:DIGEST_CHARS],
        targets="label" if "label" in frame.columns else None,
    )
    entity = dataset._to_mlflow_entity()
    profile = json.loads(entity.profile or "{}") | {"sha256": sha256}
    return {
        "name": entity.name,
        "digest": entity.digest,
        "source_type": entity.source_type,
        "source": entity.source,
        "schema": entity.schema,
        "profile": json.dumps(profile),
        "context": path.stem,
    }


def send(mlflow_client, run_id: str, entry: dict) -> None:
    """One journal entry to MLflow."""
    from mlflow.entities import Metric, Param, RunTag

    kind = entry["kind"]
    if kind == "params":
        items = [Param(k, v) for k, v in entry["items"].items()]
        for start in range(0, len(items), 100):
            mlflow_client.log_batch(run_id, params=items[start : start + 100])
    elif kind == "metrics":
        mlflow_client.log_batch(
            run_id, metrics=[Metric(k, v, entry["at"], entry["step"]) for k, v in entry["items"].items()]
        )
    elif kind == "tags":
        mlflow_client.log_batch(run_id, tags=[RunTag(k, v) for k, v in entry["items"].items()])
    elif kind == "artifact":
        path = Path(entry["path"])
        log = mlflow_client.log_artifacts if path.is_dir() else mlflow_client.log_artifact
        log(run_id, str(path), entry["artifact_path"])
    elif kind == "datasets":
        from mlflow.entities import Dataset, DatasetInput, InputTag

        inputs = [
            DatasetInput(
                Dataset(**{k: v for k, v in item.items() if k != "context"}),
                tags=[InputTag(DATASET_CONTEXT, item["context"])],
            )
            for item in entry["items"]
        ]
        mlflow_client.log_inputs(run_id, datasets=inputs)
    elif kind == "end":
        mlflow_client.set_terminated(run_id, status=entry["status"])


def replay(mlflow_client, root: Path, run_id: str, journal: list[dict]) -> None:
    """Send what a stage kept while MLflow was unreachable (TrackingUnavailable if it still is)."""
    for entry in journal:
        send(mlflow_client, run_id, entry)
    shutil.rmtree(pending_dir(root, run_id), ignore_errors=True)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def start_run(
    mlflow_client, experiment: str, name: str, parent_run_id: str | None = None, tags: dict[str, str] | None = None
) -> str:
    all_tags = {k: redact(str(v)) for k, v in (tags or {}).items()}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    return mlflow_client.create_run(experiment, tags=all_tags, run_name=name).info.run_id


def end_run(mlflow_client, run_id: str, ok: bool) -> None:
    mlflow_client.set_terminated(run_id, status="FINISHED" if ok else "FAILED")


def kill_open_runs(mlflow_client, parent_run_id: str) -> list[str]:
    """Mark KILLED the run `parent_run_id` and those of its child runs still RUNNING: their process was killed,
    so nothing else will end them. Returns their ids."""
    parent = mlflow_client.get_run(parent_run_id)
    children = mlflow_client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'"
    )
    open_runs = [run.info.run_id for run in [parent, *children] if run.info.status == "RUNNING"]
    for run_id in open_runs:
        mlflow_client.set_terminated(run_id, status="KILLED")
    return open_runs
