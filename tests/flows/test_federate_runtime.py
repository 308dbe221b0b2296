"""Real Flower processes on loopback at smoke scale (a SuperLink, three SuperNodes, `flwr run`), in the Flower
environment (`flows.federation.env`; MINIATURIZE_FLOWER_VENV names an existing one, else .venv-flower is
built once): a federation end to end, a client killed mid-round, a client sending NaN weights refused. After
each, no process it started is left running. Marked `federation`: `make test-federation` runs them, `make test`
leaves them out."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from components.config import FederatedConfig
from components.federated import local
from components.federated.shards import pooled_test
from flows.federation.runtime import REPO
from flows.federation.stage import run_federation
from tests.conftest import make_frame, tiny_bert, write_prepared

pytestmark = pytest.mark.federation  # `make test-federation`: needs the Flower environment

FAULTY = "tests.components.federated.faulty_client:app"
SMOKE = dict(
    clients=["movie", "amazon", "tweets"],  # names only: the shards here are the fixture's phrases
    rounds=1,
    lr=1e-2,
    batch_size=8,
    max_length=32,
    min_available_clients=3,
    min_clients=2,
    straggler_grace_s=1.0,
    round_timeout_s=240.0,
    distill=True,
    evaluate_on_clients=False,
)


@pytest.fixture(scope="module")
def env(flower_env):
    return flower_env


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("student"), dropout=0.0)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    return {
        name: write_prepared(
            root / name,
            {
                "train": make_frame(8, 1000 * i),
                "validation": make_frame(3, 1000 * i + 100),
                "test": make_frame(3, 1000 * i + 200),
            },
        )
        for i, name in enumerate(("a", "b", "c"))
    }


class Watch:
    """Every process the federation started, and their descendants, noted while the run is on."""

    def __init__(self):
        self.pids: set[int] = set()

    def __call__(self, federation):
        for proc in federation.procs.values():
            try:
                self.pids |= {proc.pid} | {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
            except psutil.NoSuchProcess:
                pass

    def left_running(self) -> list[int]:
        alive = []
        for pid in self.pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        return alive


def weights_of(folder: Path) -> dict:
    model, _, _ = local.load_student(folder)
    return local.get_arrays(model)


@pytest.mark.timeout(900)
def test_three_clients_federate_end_to_end(env, student, shards, tiny_teacher_dir, tmp_path):
    cfg = FederatedConfig(**SMOKE | {"min_clients": 3, "evaluate_on_clients": True})
    pooled = pooled_test(shards, tmp_path / "pooled")
    watch = Watch()
    started = time.perf_counter()
    # client a has a teacher beside it (distillation), b and c learn from their labels alone
    record = run_federation(
        cfg,
        student,
        shards,
        tmp_path / "fed",
        env,
        seed=0,
        teachers={"a": tiny_teacher_dir},
        pooled_test=pooled,
        on_started=watch,
    )
    print(f"federation: {time.perf_counter() - started:.1f} s")
    first = record["rounds"][1]
    assert [r["round"] for r in record["rounds"]] == [0, 1]
    assert sorted(first["accepted"]) == ["a", "b", "c"] and not first["refused"] and not first["failed"]
    assert first["clients"]["a"]["distilled"] == 1.0 and first["clients"]["b"]["distilled"] == 0.0
    assert {"test_accuracy", "received_test_accuracy", "train_loss"} <= set(first["clients"]["c"])
    assert 0 <= first["pooled_accuracy"] <= 1 and first["seconds"] > 0
    # what travels: fp16 both ways, every parameter but the word embeddings
    assert record["bytes_per_round_per_client"] == record["travelling_params_fp32_bytes"]
    assert record["clients"].keys() == shards.keys()
    after, before = weights_of(tmp_path / "fed" / "student"), weights_of(student)
    assert any(not np.allclose(after[k], before[k]) for k in before)
    assert json.loads((tmp_path / "fed" / "federation.json").read_text())["key"] == record["key"]
    # after the last round, the classifier layer refitted from every client's statistics (CCVR)
    head = record["head"]
    assert head["calibrated"] and sorted(head["clients"]) == ["a", "b", "c"] and not head["refused"]
    assert head["clients"]["a"] == {"rows.0": 8, "rows.1": 8} and head["bytes_up"] > 0
    assert 0 <= head["pooled_accuracy_before"] <= 1 and 0 <= head["pooled_accuracy_after"] <= 1
    assert not np.allclose(after["classifier.weight"], before["classifier.weight"])
    assert watch.pids and not watch.left_running()


@pytest.mark.timeout(900)
def test_a_client_killed_mid_round_does_not_stop_the_round(env, student, shards, tmp_path):
    cfg = FederatedConfig(**SMOKE)
    marker = tmp_path / "c-started"
    watch = Watch()

    def kill_c_once_training(federation):
        watch(federation)
        deadline = time.time() + 300
        while not marker.exists():
            assert time.time() < deadline, "client c never started its round"
            time.sleep(0.2)
        watch(federation)
        federation.kill("supernode-c")  # the SuperNode and its ClientApp process, mid-round

    record = run_federation(
        cfg,
        student,
        shards,
        tmp_path / "fed",
        env,
        seed=0,
        clientapp=FAULTY,
        client_extra={"c": {"fault": "slow", "marker": str(marker)}},
        on_started=kill_c_once_training,
    )
    first = record["rounds"][1]
    assert sorted(first["accepted"]) == ["a", "b"]
    assert "c" not in first["clients"]
    after, before = weights_of(tmp_path / "fed" / "student"), weights_of(student)
    assert any(not np.allclose(after[k], before[k]) for k in before)
    assert not watch.left_running()


@pytest.mark.timeout(900)
def test_a_client_sending_nan_weights_is_refused_and_left_out(env, student, shards, tmp_path):
    cfg = FederatedConfig(**SMOKE)
    watch = Watch()
    record = run_federation(
        cfg,
        student,
        shards,
        tmp_path / "fed",
        env,
        seed=0,
        clientapp=FAULTY,
        client_extra={"a": {"fault": "nan"}},
        on_started=watch,
    )
    first = record["rounds"][1]
    assert sorted(first["accepted"]) == ["b", "c"]
    assert [r["client"] for r in record["refused"]] == ["a"] and "non-finite" in record["refused"][0]["reason"]
    after = weights_of(tmp_path / "fed" / "student")
    assert all(np.all(np.isfinite(v)) for v in after.values())
    log = (tmp_path / "fed" / "runtime" / "logs" / "serverapp.log").read_text()
    assert "update of a refused: non-finite" in log
    # its statistics for the head calibration are NaN too: refused, and the layer refitted from b's and c's
    assert record["head"]["refused"] == ["a"] and record["head"]["calibrated"]
    assert sorted(record["head"]["clients"]) == ["b", "c"] and "the statistics of a refused" in log
    assert not watch.left_running()


def test_a_client_node_config_and_the_app_folder(tmp_path):
    from flows.federation.runtime import Client, app_folder

    client = Client("tweets", Path("/data/tweets"), Path("/models/student"), None, 2, {"fault": "nan"})
    text = client.node_config(Path("/cache"))
    assert 'name="tweets"' in text and 'teacher-dir=""' in text and "threads=2" in text and 'fault="nan"' in text
    app = app_folder(tmp_path / "app", "fed", "a.b:app", "c.d:app", tmp_path / "server.json")
    toml = (app / "pyproject.toml").read_text()
    assert 'serverapp = "a.b:app"' in toml and 'clientapp = "c.d:app"' in toml and "settings-file" in toml


@pytest.mark.timeout(1200)
def test_a_restarted_server_resumes_after_the_last_completed_round(env, student, shards, tmp_path):
    from components.federated.updates import CHECKPOINT_STATE
    from flows.federation.runtime import FederationError

    cfg = FederatedConfig(**SMOKE | {"rounds": 2})
    state = tmp_path / "fed" / "server" / "checkpoint" / CHECKPOINT_STATE
    watch = Watch()

    def kill_server_after_round_one(federation):
        deadline = time.time() + 600
        while not (state.exists() and json.loads(state.read_text())["completed_round"] >= 1):
            assert time.time() < deadline, "round 1 never completed"
            time.sleep(0.2)
        watch(federation)
        federation.kill("superlink")  # the SuperLink and its ServerApp, as a crash would

    with pytest.raises(FederationError, match="superlink exited"):
        run_federation(cfg, student, shards, tmp_path / "fed", env, seed=0, on_started=kill_server_after_round_one)
    assert json.loads(state.read_text())["completed_round"] == 1
    record = run_federation(cfg, student, shards, tmp_path / "fed", env, seed=0, on_started=watch)
    assert record["resumed_after"] == 1
    assert [r["round"] for r in record["rounds"]] == [0, 1, 2]
    assert sorted(record["rounds"][2]["accepted"]) == ["a", "b", "c"]
    assert not watch.left_running()


FEDPROX_ROUND = """
import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.supercore.task_identity import TaskIdentity

from components.federated.config import FederatedConfig
from components.federated.server_app import RobustProx, strategy_for

class Grid:
    def get_node_ids(self):
        return [1, 2, 3]

TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # what a ServerApp process has set
cfg = FederatedConfig(strategy="fedprox", proximal_mu=0.3, min_available_clients=3, min_clients=2)
strategy = strategy_for(cfg)
assert isinstance(strategy, RobustProx)
weights = ArrayRecord({"w": Array(np.ones(3, np.float32))})
messages = list(strategy.configure_train(1, weights, ConfigRecord({}), Grid()))
config, arrays = messages[0].content["config"], messages[0].content["arrays"]
print(len(messages), config["proximal-mu"], arrays["w"].numpy().dtype, strategy.min_available_nodes)
"""


def test_fedprox_sends_mu_and_fp16_weights_and_later_rounds_need_only_the_minimum(env):
    """Flower's FedProx under our `Robust` (cooperative bases): run in the Flower environment, no processes."""
    import subprocess

    from flows.federation.runtime import QUIET

    done = subprocess.run(
        [str(env.bin / "python"), "-c", FEDPROX_ROUND],
        env=os.environ | QUIET | {"PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-4:] == ["3", "0.3", "float16", "2"]
