import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flows import tracking
from flows.retries import RetryPolicy, TrackingUnavailable, with_retries


def test_mlflow_tracker_logs_to_the_given_child_run_and_open_runs_are_killed(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = tracking.client(tmp_path)
    experiment = tracking.experiment_id(client, tmp_path)
    assert tracking.experiment_id(client, tmp_path) == experiment  # found, not created twice
    parent = tracking.start_run(client, experiment, "pipeline")
    child = tracking.start_run(
        client, experiment, "distill", parent_run_id=parent, tags={"miniaturize.stage": "distill"}
    )
    tracker = tracking.MlflowTracker(client, child)
    tracker.log_params({"distill": {"alpha": 0.5, "layers": [0, 2]}})
    tracker.log_metrics({"val_accuracy": 0.8, "note": "not a number", "flag": True}, step=2)
    (tmp_path / "card.json").write_text(json.dumps({"rows": 3}))
    tracker.log_artifact(tmp_path / "card.json")
    tracker.set_tags({"miniaturize.cache_hit": "false"})
    tracking.end_run(client, child, ok=True)

    run = client.get_run(child)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.params == {"distill.alpha": "0.5", "distill.layers": "[0, 2]"}
    assert run.data.metrics == {"val_accuracy": 0.8}
    assert [m.step for m in client.get_metric_history(child, "val_accuracy")] == [2]
    assert [a.path for a in client.list_artifacts(child)] == ["card.json"]
    assert run.info.status == "FINISHED"
    assert (tmp_path / "mlflow.db").is_file()

    # The runs of a pipeline killed mid-stage, marked by the next run (on the same store: a new one takes 10 s)
    killed_mid_stage = tracking.start_run(client, experiment, "prune", parent_run_id=parent)
    other = tracking.start_run(client, experiment, "another pipeline")
    assert sorted(tracking.kill_open_runs(client, parent)) == sorted([parent, killed_mid_stage])
    status = {run_id: client.get_run(run_id).info.status for run_id in (parent, child, killed_mid_stage, other)}
    assert status == {parent: "KILLED", child: "FINISHED", killed_mid_stage: "KILLED", other: "RUNNING"}


# ---------------------------------------------------------------- the data splits a stage reads


def prepared_splits(folder):
    """A prepared folder's splits (train and test parquet files) beside a file that is not a split."""
    import pandas as pd

    folder.mkdir(parents=True)
    pd.DataFrame({"text": ["a good film", "a dull film"], "label": ["positive", "negative"]}).to_parquet(
        folder / "train.parquet"
    )
    pd.DataFrame({"text": ["fine"], "label": ["positive"]}).to_parquet(folder / "test.parquet")
    (folder / "data_card.json").write_text("{}")
    return folder


def dataset_inputs(client, run_id) -> dict:
    """{context: (name, digest, schema, profile)} of the run's dataset inputs, as MLflow reads them back."""
    inputs = client.get_run(run_id).inputs.dataset_inputs
    return {
        {t.key: t.value for t in i.tags}[tracking.DATASET_CONTEXT]: (
            i.dataset.name,
            i.dataset.digest,
            json.loads(i.dataset.schema),
            json.loads(i.dataset.profile),
        )
        for i in inputs
    }


def test_the_splits_a_stage_reads_are_its_runs_dataset_inputs(tmp_path, monkeypatch):
    from components.kit.hashing import file_sha256

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    prepared = prepared_splits(tmp_path / "data" / "prepared")
    client = tracking.client(tmp_path)
    run_id = tracking.start_run(client, tracking.experiment_id(client, tmp_path), "finetune")
    tracker = tracking.MlflowTracker(client, run_id, root=tmp_path)
    tracker.log_datasets([prepared, tmp_path / "models" / "teacher"])  # a model folder holds no split
    tracker.log_datasets([prepared])  # logged again (a retried stage): still one input per split

    logged = dataset_inputs(client, run_id)
    assert set(logged) == {"train", "test"} and len(client.get_run(run_id).inputs.dataset_inputs) == 2
    name, digest, schema, profile = logged["train"]
    sha256 = file_sha256(prepared / "train.parquet")
    assert name == "data/prepared/train.parquet" and digest == sha256[:32] and profile["sha256"] == sha256
    assert [c["name"] for c in schema["mlflow_colspec"]] == ["text", "label"] and profile["num_rows"] == 2


def test_datasets_wait_in_the_journal_while_mlflow_is_down_and_never_fail_the_stage(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    prepared = prepared_splits(tmp_path / "data" / "prepared")
    client = tracking.client(tmp_path)
    run_id = tracking.start_run(client, tracking.experiment_id(client, tmp_path), "distill")

    class Down:
        tracking_uri = "http://mlflow.invalid"

        def log_inputs(self, *args, **kwargs):
            raise TrackingUnavailable("MLflow did not answer")

    tracker = tracking.MlflowTracker(Down(), run_id, root=tmp_path)
    tracker.log_datasets([prepared])
    assert [e["kind"] for e in tracker.journal] == ["datasets"]
    json.dumps(tracker.journal)  # what the stage record keeps: plain JSON
    tracking.replay(client, tmp_path, run_id, tracker.journal)
    assert set(dataset_inputs(client, run_id)) == {"train", "test"}

    (prepared / "test.parquet").write_text("not parquet")  # a split that cannot be read: one line, no failure
    tracking.MlflowTracker(client, run_id, root=tmp_path).log_datasets([prepared])
    assert "not logged as datasets" in capsys.readouterr().out


# ---------------------------------------------------------------- calls that are not safe to repeat


class FakeMlflowServer(ThreadingHTTPServer):
    """Just enough of MLflow's REST API for `create_run` and `search_runs` (runs kept in memory). The first
    create commits its run, then answers only after `stall_seconds`: past the client's timeout, as a server
    that did the work while the network lost its answer."""

    daemon_threads = True

    def __init__(self, stall_seconds: float):
        super().__init__(("127.0.0.1", 0), FakeMlflowHandler)
        self.stall_seconds, self.runs, self.creates = stall_seconds, [], 0
        self.uri = f"http://127.0.0.1:{self.server_address[1]}"


class FakeMlflowHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        server: FakeMlflowServer = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        if self.path.endswith("/runs/create"):
            server.creates += 1
            run_id = uuid.uuid4().hex
            run = {
                "info": {
                    "run_id": run_id,
                    "run_uuid": run_id,
                    "experiment_id": body["experiment_id"],
                    "run_name": body.get("run_name", ""),
                    "status": "RUNNING",
                    "lifecycle_stage": "active",
                    "start_time": body.get("start_time", 0),
                    "artifact_uri": f"/tmp/{run_id}",
                },
                "data": {"tags": body.get("tags", [])},
            }
            server.runs.append(run)  # committed
            if server.creates == 1:
                time.sleep(server.stall_seconds)
            self.answer({"run": run})
        elif self.path.endswith("/runs/search"):
            wanted = re.fullmatch(r"tags\.`([^`]+)` = '([^']*)'", body.get("filter", ""))
            key, value = wanted.groups()
            self.answer({"runs": [run for run in server.runs if {"key": key, "value": value} in run["data"]["tags"]]})
        else:
            self.send_error(404)

    def answer(self, payload: dict) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting
            pass


@pytest.fixture
def stalling_mlflow(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")  # seconds
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    server = FakeMlflowServer(stall_seconds=2.5)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    yield server
    server.shutdown()
    server.server_close()


def test_a_run_whose_create_timed_out_after_the_server_committed_it_is_created_once(tmp_path, stalling_mlflow, capsys):
    from mlflow.tracking import MlflowClient

    policy = RetryPolicy(attempts=3, backoff_seconds=0.1)
    # What a plain retry of create_run does against this server: two runs for one request.
    plain = MlflowClient(tracking_uri=stalling_mlflow.uri)
    with_retries(lambda: plain.create_run("0", run_name="pipeline"), policy, "create_run", "MLflow")
    assert len(stalling_mlflow.runs) == 2
    stalling_mlflow.runs.clear()
    stalling_mlflow.creates = 0

    run_id = tracking.start_run(tracking.client(tmp_path, policy), "0", "pipeline", tags={"miniaturize.stage": "x"})
    assert "create_run failed" in capsys.readouterr().out  # the first attempt did time out
    assert stalling_mlflow.creates == 1 and [r["info"]["run_id"] for r in stalling_mlflow.runs] == [run_id]
    tags = {t["key"]: t["value"] for t in stalling_mlflow.runs[0]["data"]["tags"]}
    assert tags["miniaturize.stage"] == "x" and len(tags[tracking.REQUEST_ID]) == 32


class FlakyClient:
    """Stands for an `MlflowClient`: each call fails `failures` times with a timeout, then succeeds."""

    tracking_uri = "http://mlflow.invalid"

    def __init__(self, failures: int):
        self.failures, self.calls = failures, []

    def __getattr__(self, name: str):
        def call(*args, **kwargs):
            self.calls.append(name)
            if self.calls.count(name) <= self.failures:
                raise TimeoutError("read timed out")
            return name

        return call


def test_only_calls_safe_to_repeat_are_retried():
    client = tracking.ResilientClient(FlakyClient(failures=1), RetryPolicy(attempts=3, backoff_seconds=0))
    assert client.log_batch("run", metrics=[]) == "log_batch"  # same timestamp and step: one row however sent
    assert client.log_artifact("run", "card.json") == "log_artifact"  # same file, same path: replaced
    assert client.set_terminated("run", status="FINISHED") == "set_terminated"
    with pytest.raises(TrackingUnavailable, match="not sent again"):
        client.log_metric("run", "loss", 0.1)  # stamps a new time at each attempt
    with pytest.raises(TrackingUnavailable, match="not sent again"):
        client.create_model_version("model", "runs:/run/model", "run")
    assert client._inner.calls.count("log_metric") == 1 and client._inner.calls.count("create_model_version") == 1


def test_an_experiment_whose_create_timed_out_is_looked_up_by_name_before_another_attempt():
    inner = FlakyClient(failures=1)
    inner.get_experiment_by_name = lambda name: type("Experiment", (), {"experiment_id": "7"})()
    client = tracking.ResilientClient(inner, RetryPolicy(attempts=3, backoff_seconds=0))
    assert client.create_experiment("miniaturize") == "7"
    assert inner.calls == ["create_experiment"]
