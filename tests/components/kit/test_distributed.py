"""Data-parallel training through the real launcher, and the teacher soft-target cache.

The launcher test runs `python -m flows.cli stage finetune` then `distill` with `--processes 2` (torchrun,
two CPU processes on gloo) in a throwaway project, and compares them with the same two stage functions run
in this one process (what `miniaturize stage NAME` runs without --processes) in another project.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from transformers import AutoModelForSequenceClassification

from components.config import DistributedConfig, TeacherConfig
from components.kit import distributed, soft_targets
from components.kit.labelling import SingleLabel
from components.kit.modeling import load_encoded_splits
from components.kit.tracking import NullTracker
from tests.conftest import make_frame

pytestmark = pytest.mark.slow  # two training processes: scheduled first (tests/conftest.py)

# Two processes against one, dropout off (see `no_dropout_model`): the runs differ only in floating-point
# summation order (each share pads to its own longest sentence; the all-reduce sums the gradients), which
# left the per-epoch train losses 1e-8 apart when this was written, after 28 + 18 optimizer steps. 1e-4
# leaves room for other CPUs and BLAS builds, and is far below what a wrong split gives (half the rows or
# a share counted twice moves these losses by 0.01-0.1). Accuracy must match exactly: the same
# predictions on the same sentences.
LOSS_TOLERANCE = 1e-4

TEACHER = {"epochs": 4, "patience": 4, "batch_size": 7, "max_length": 32, "lr": 3e-3}
STUDENT = {"layers": [0], "epochs": 2, "patience": 2, "batch_size": 7, "max_length": 32, "lr": 3e-3, "ablation": False}


@pytest.fixture(scope="module")
def no_dropout_model(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with dropout off. Dropout masks come from each process's own random stream, so with
    dropout on, two processes and one give equally good but not equal runs; off, they must agree."""
    out = tmp_path_factory.mktemp("no_dropout")
    for item in tiny_model_dir.iterdir():
        shutil.copy2(item, out / item.name)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    model.save_pretrained(out, safe_serialization=True)
    return out


def make_project(root: Path, prepared: Path, model_dir: Path) -> Path:
    shutil.copytree(prepared, root / "data" / "prepared")
    pd.DataFrame({"text": make_frame(5, 500)["text"]}).to_parquet(
        root / "data" / "prepared" / "transfer.parquet", index=False
    )
    params = {"teacher": {"model": str(model_dir), **TEACHER}, "distill": STUDENT, "distributed": {"device": "cpu"}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def stage(root: Path, name: str, processes: int) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "stage", name, "--processes", str(processes)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


class History(NullTracker):
    def __init__(self):
        self.history = {"train_loss": [], "val_accuracy": []}

    def log_metrics(self, metrics, step=None):
        for key, values in self.history.items():
            if step is not None and key in metrics:
                values.append(metrics[key])


def stage_runs(root: Path) -> dict[str, list]:
    """{stage: [(run, {metric: [value per epoch]})]} from the project's MLflow store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    runs: dict[str, list] = {}
    for run in client.search_runs([client.get_experiment_by_name("miniaturize").experiment_id]):
        history = {
            key: [m.value for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]
            for key in ("train_loss", "val_accuracy")
        }
        runs.setdefault(run.data.tags["miniaturize.stage"], []).append((run, history))
    return runs


@pytest.fixture(scope="module")
def launched(tmp_path_factory, tiny_prepared, no_dropout_model) -> dict[int, dict]:
    """finetune then distill: on two processes through the launcher, and in this one process."""
    import time

    from components.config import load_params
    from flows.tasks.classification import TASK

    out = {}
    root = make_project(tmp_path_factory.mktemp("two_processes"), tiny_prepared, no_dropout_model)
    started = time.perf_counter()
    logs = {name: stage(root, name, 2) for name in ("finetune", "distill")}
    out[2] = {"root": root, "logs": logs, "seconds": time.perf_counter() - started}
    root = make_project(tmp_path_factory.mktemp("one_process"), tiny_prepared, no_dropout_model)
    params, started, histories = load_params(root / "params.yaml"), time.perf_counter(), {}
    for name in ("finetune", "distill"):
        histories[name] = History()
        TASK.stages[name].run(params, TASK.workspace(root), histories[name])
    out[1] = {
        "root": root,
        "histories": {k: v.history for k, v in histories.items()},
        "seconds": time.perf_counter() - started,
    }
    return out


def test_two_processes_train_the_same_models_as_one(launched):
    two = launched[2]
    runs = stage_runs(two["root"])
    assert sorted(runs) == ["distill", "finetune"]
    assert all(len(found) == 1 for found in runs.values()), "only rank 0 creates an MLflow run"
    for name, folder, epochs in (("finetune", "teacher", 4), ("distill", "student", 2)):
        run, history = runs[name][0]
        assert run.data.tags["miniaturize.processes"] == "2"
        assert two["logs"][name].count(f"[{name}] started") == 1  # the other process prints nothing
        one = launched[1]["histories"][name]
        assert len(one["train_loss"]) == len(history["train_loss"]) == epochs
        assert np.allclose(one["train_loss"], history["train_loss"], rtol=0, atol=LOSS_TOLERANCE), (name, one, history)
        assert one["val_accuracy"] == history["val_accuracy"], name
        saved = [json.loads((launched[p]["root"] / "models" / folder / "metrics.json").read_text()) for p in (1, 2)]
        assert saved[0]["test_accuracy"] == saved[1]["test_accuracy"]
        assert saved[0]["best_epoch"] == saved[1]["best_epoch"]
        print(
            f"{name}: one process loss {one['train_loss'][-1]:.8f} val acc {one['val_accuracy'][-1]}, "
            f"two {history['train_loss'][-1]:.8f} {history['val_accuracy'][-1]}"
        )
    # the teacher learned something, so equal accuracies are not two chance levels
    assert max(launched[1]["histories"]["finetune"]["val_accuracy"]) > 0.75
    print({p: round(r["seconds"], 1) for p, r in launched.items()})


def test_the_launch_stored_the_soft_targets_once(launched):
    for run in launched.values():
        stored = sorted(
            json.loads(p.read_text())["split"]
            for p in (run["root"] / "models" / "teacher" / "soft_targets").glob("*/inputs.json")
        )
        assert stored == ["train", "transfer"]
        assert not (run["root"] / ".miniaturize" / "soft_targets").exists()  # distill found them: nothing computed


def test_only_training_stages_run_on_several_processes():
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, ["stage", "export", "--processes", "2"])
    assert result.exit_code == 2 and "only finetune, distill, prune" in result.output


def test_a_process_other_than_rank_0_writes_nothing(tiny_teacher_dir, tiny_prepared, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from components.kit.modeling import save_model

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")  # no process group here: the barriers are skipped
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir)
    save_model(model, AutoTokenizer.from_pretrained(tiny_teacher_dir), ["negative", "positive"], tmp_path / "m", {})
    soft_targets.store(tmp_path / "soft", "key", {}, np.zeros((2, 2)))
    assert not (tmp_path / "m").exists() and not (tmp_path / "soft").exists()


def test_shares_cover_every_row_once_and_weights_rebuild_the_batch_mean():
    index = np.arange(7)  # a batch that does not split evenly
    for world in (1, 2, 3):
        for accum in (1, 2):
            parts = [p for r in range(world) for p in distributed.micro_batches(index, r, world, accum)]
            assert sorted(np.concatenate(parts).tolist()) == index.tolist()
            # each part's mean loss x len * world / whole, averaged over the world (DDP): the batch mean
            assert sum(len(p) * world / len(index) for p in parts) / world == pytest.approx(1.0)
    assert [len(p) for p in distributed.micro_batches(np.arange(1), 1, 2, 1)] == [0]  # joins at weight zero


def test_accumulation_and_checkpointing_train_the_same_model(no_dropout_model, tiny_prepared, tmp_path):
    from components.classification import finetune

    logits = {}
    for accum in (1, 2):  # two micro-batches per step, and activations recomputed in the backward pass
        cfg = TeacherConfig(model=str(no_dropout_model), epochs=2, batch_size=8, max_length=32, lr=1e-3)
        finetune.run(
            cfg,
            tiny_prepared,
            tmp_path / str(accum),
            NullTracker(),
            seed=0,
            dist=DistributedConfig(grad_accum_steps=accum, gradient_checkpointing=accum == 2),
        )
        logits[accum] = np.load(next((tmp_path / str(accum) / "soft_targets").glob("*/logits.npy")))
    assert np.allclose(logits[1], logits[2], atol=1e-4)  # the trained teachers' logits on the train split


def test_soft_targets_are_reused_for_the_same_key_and_recomputed_when_teacher_or_data_change(
    tiny_teacher_dir, tiny_prepared, tmp_path, monkeypatch
):
    from transformers import AutoTokenizer

    calls = []
    compute = soft_targets.teacher_logits
    monkeypatch.setattr(soft_targets, "teacher_logits", lambda *a: calls.append(1) or compute(*a))
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)

    def train_split(prepared, max_length=32):
        data = load_encoded_splits(
            prepared, tokenizer, SingleLabel(("negative", "positive")), max_length, names=("train",)
        )
        return data["train"]

    cache = tmp_path / "cache"
    stored = soft_targets.load(tiny_teacher_dir, tiny_prepared, "train", train_split(tiny_prepared), 32, cache)
    assert calls == [] and not cache.exists()  # the finetune stage stored them in the teacher's folder
    soft_targets.load(tiny_teacher_dir, tiny_prepared, "train", train_split(tiny_prepared, 16), 16, cache)
    soft_targets.load(tiny_teacher_dir, tiny_prepared, "train", train_split(tiny_prepared, 16), 16, cache)
    assert len(calls) == 1 and len(list(cache.iterdir())) == 1  # another length: computed once, then reused

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_teacher_dir, teacher)  # soft_targets/ comes along, now stale
    model = AutoModelForSequenceClassification.from_pretrained(teacher)
    model.classifier.bias.data += 1.0
    model.save_pretrained(teacher, safe_serialization=True)
    fresh = soft_targets.load(teacher, tiny_prepared, "train", train_split(tiny_prepared), 32, cache)
    assert len(calls) == 2 and np.allclose(fresh - stored, 1.0, atol=1e-4)

    prepared = tmp_path / "prepared"
    shutil.copytree(tiny_prepared, prepared)
    frame = pd.read_parquet(prepared / "train.parquet")
    frame.loc[0, "text"] = "an entirely different sentence"
    frame.to_parquet(prepared / "train.parquet", index=False)
    soft_targets.load(tiny_teacher_dir, prepared, "train", train_split(prepared), 32, cache)
    assert len(calls) == 3
