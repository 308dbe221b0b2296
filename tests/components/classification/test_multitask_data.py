"""The classification stages on multitask data (a data card naming tasks, `components.kit.labelling`): the
teacher, the distilled student and the pruned student each carry one block of logits per task and report each
task's test accuracy."""

import json

import pytest
from transformers import AutoModelForSequenceClassification

from components.classification import distill, finetune, prune
from components.config import DistillConfig, PruneConfig, TeacherConfig
from components.kit.heads import Heads
from components.kit.tracking import NullTracker
from components.kit.training import TaskMix

TASK_METRICS = {"test_accuracy", "test_accuracy.sentiment", "test_accuracy.length"}


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_model_dir, tiny_multitask_prepared):
    out = tmp_path_factory.mktemp("multitask_chain")
    data, weights = tiny_multitask_prepared, TaskMix({"length": 0.5}, balanced=True)
    teacher = TeacherConfig(model=str(tiny_model_dir), epochs=1, batch_size=8, max_length=32, lr=1e-3)
    finetune.run(teacher, data, out / "teacher", NullTracker(), seed=0, mix=weights)
    student_cfg = DistillConfig(
        layers=[1], epochs=1, batch_size=8, max_length=32, lr=1e-3, transfer=False, ablation=True
    )
    student = distill.run(student_cfg, out / "teacher", data, out / "student", NullTracker(), seed=0, mix=weights)
    prune_cfg = PruneConfig(
        head_ratio=0.5,
        ffn_ratio=0.5,
        steps=1,
        epochs=1,
        batch_size=8,
        max_length=32,
        importance_batches=2,
        accuracy_budget_points=100.0,  # the budget's path on every task's validation accuracy; never spent here
    )
    pruned = prune.run(
        prune_cfg, out / "student", out / "teacher", data, out / "pruned", NullTracker(), seed=0, mix=weights
    )
    return out, student, pruned


def test_distilled_and_pruned_students_keep_every_tasks_head(chain):
    out, student, pruned = chain
    heads = {
        folder: Heads.from_config(AutoModelForSequenceClassification.from_pretrained(out / folder).config)
        for folder in ("teacher", "student", "pruned")
    }
    assert heads["teacher"] == heads["student"] == heads["pruned"] and heads["pruned"].width == 4
    assert TASK_METRICS <= set(student.metrics) and TASK_METRICS <= set(pruned.metrics)
    assert {"ablation.labels_only.test_accuracy"} <= set(student.metrics)
    assert pruned.metrics["params_after"] < pruned.metrics["params_before"]
    assert json.loads((out / "pruned" / "labels.json").read_text()) == heads["pruned"].names
