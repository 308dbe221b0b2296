import json

import numpy as np
import pytest
from transformers import AutoModelForSequenceClassification

from components.classification import finetune
from components.config import TeacherConfig
from components.kit.sources import ModelSourceError, resolve_model_source
from components.kit.tracking import NullTracker
from components.kit.training import TaskMix


class RecordingTracker(NullTracker):
    def __init__(self):
        self.metrics = []

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))


def test_finetune_saves_model_logits_and_step_metrics(tiny_model_dir, tiny_prepared, tmp_path):
    tracker = RecordingTracker()
    cfg = TeacherConfig(model=str(tiny_model_dir), epochs=2, patience=2, batch_size=8, max_length=32, lr=1e-3)
    result = finetune.run(cfg, tiny_prepared, tmp_path, tracker, seed=0)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "tokenizer.json").is_file()
    assert json.loads((tmp_path / "labels.json").read_text()) == ["negative", "positive"]
    stored = list((tmp_path / "soft_targets").glob("*/logits.npy"))
    assert len(stored) == 1  # the train split; the fixture data has no transfer set
    logits = np.load(stored[0])
    assert logits.shape == (48, 2) and np.isfinite(logits).all()
    inputs = json.loads((stored[0].parent / "inputs.json").read_text())
    assert inputs["split"] == "train" and inputs["max_length"] == 32 and inputs["rows"] == 48
    assert [step for step, m in tracker.metrics if "val_accuracy" in m and step] == [1, 2]
    assert 0.0 <= result.metrics["test_accuracy"] <= 1.0
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert model.config.id2label == {0: "negative", 1: "positive"}


def test_resolve_model_source(tmp_path, monkeypatch):
    assert resolve_model_source("sentence-transformers/all-MiniLM-L6-v2").endswith("model")
    with pytest.raises(ModelSourceError, match="does not exist"):
        resolve_model_source(str(tmp_path / "missing"))
    with pytest.raises(ModelSourceError, match="no config.json"):
        resolve_model_source(str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError, match="offline"):
        resolve_model_source("someone/some-model")


def test_finetune_trains_one_block_of_logits_per_task_on_multitask_data(
    tiny_model_dir, tiny_multitask_prepared, tmp_path
):
    """A prepared folder whose data card names tasks gives a teacher with one head per task
    (`components.kit.heads`), scored per task on the rows that have each label."""
    from components.kit.heads import Heads
    from tests.conftest import MULTITASK_TASKS

    cfg = TeacherConfig(model=str(tiny_model_dir), epochs=1, batch_size=8, max_length=32, lr=1e-3)
    result = finetune.run(cfg, tiny_multitask_prepared, tmp_path, NullTracker(), seed=0, mix=TaskMix({"length": 0.5}))
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert Heads.from_config(model.config) == Heads.of({n: t["labels"] for n, t in MULTITASK_TASKS.items()})
    assert model.config.num_labels == 4 and model.config.id2label[2] == "length:long"
    assert json.loads((tmp_path / "labels.json").read_text())[1] == "sentiment:positive"
    assert {"test_accuracy", "test_accuracy.sentiment", "test_accuracy.length"} <= set(result.metrics)
    assert np.load(next((tmp_path / "soft_targets").glob("*/logits.npy"))).shape == (48, 4)
