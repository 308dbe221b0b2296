"""The single-task baseline's inputs: a task's rows as single-label data, and the multitask teacher cut to
that task's head (same encoder, same logits for the task)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from components.classification import finetune
from components.config import TeacherConfig
from components.kit.heads import Heads
from components.kit.modeling import encode, predict_logits
from components.kit.tracking import NullTracker
from components.multitask import singles


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_model_dir, tiny_multitask_prepared):
    out = tmp_path_factory.mktemp("mt_teacher") / "teacher"
    cfg = TeacherConfig(model=str(tiny_model_dir), epochs=1, batch_size=8, max_length=32, lr=1e-3)
    finetune.run(cfg, tiny_multitask_prepared, out, NullTracker(), seed=0)
    return out


def test_project_data_keeps_the_rows_with_the_tasks_label(tiny_multitask_prepared, tmp_path):
    card = singles.project_data(tiny_multitask_prepared, "sentiment", tmp_path / "sentiment")
    train = pd.read_parquet(tmp_path / "sentiment" / "train.parquet")
    source = pd.read_parquet(tiny_multitask_prepared / "train.parquet")
    assert list(train.columns) == ["text", "label"] and len(train) == source["sentiment"].notna().sum()
    assert card["labels"] == ["negative", "positive"] and card["rows"]["train"] == len(train)
    assert json.loads((tmp_path / "sentiment" / "data_card.json").read_text())["task"] == "sentiment"


def test_teacher_view_answers_its_task_as_the_multitask_teacher_does(teacher, tiny_multitask_prepared, tmp_path):
    view = singles.teacher_view(teacher, "length", tmp_path / "length")
    multi = AutoModelForSequenceClassification.from_pretrained(teacher)
    single = AutoModelForSequenceClassification.from_pretrained(view)
    assert single.config.num_labels == 2 and not getattr(single.config, "task_heads", None)
    assert json.loads((view / "labels.json").read_text()) == ["long", "short"]
    tokenizer = AutoTokenizer.from_pretrained(view)
    texts = pd.read_parquet(tiny_multitask_prepared / "test.parquet")["text"].tolist()
    data = encode(tokenizer, texts, None, [], 32)
    cut = Heads.from_config(multi.config).slices["length"]
    np.testing.assert_allclose(
        predict_logits(single, data, tokenizer.pad_token_id),
        predict_logits(multi, data, tokenizer.pad_token_id)[:, cut],
        atol=1e-5,
    )


def test_teacher_view_refuses_a_task_the_teacher_lacks(teacher, tmp_path):
    with pytest.raises(ValueError, match="no head for task 'topic'"):
        singles.teacher_view(teacher, "topic", tmp_path / "topic")


def test_the_views_soft_targets_are_cut_from_the_teachers_without_running_it(
    teacher, tiny_multitask_prepared, tmp_path
):
    from components.kit import soft_targets

    view = singles.teacher_view(teacher, "sentiment", tmp_path / "view")
    projected = tmp_path / "data"
    singles.project_data(tiny_multitask_prepared, "sentiment", projected)
    assert singles.carry_soft_targets(teacher, tiny_multitask_prepared, view, projected, "sentiment", 32)
    tokenizer = AutoTokenizer.from_pretrained(view)
    train = pd.read_parquet(projected / "train.parquet")
    data = encode(tokenizer, train["text"].tolist(), train["label"].tolist(), ["negative", "positive"], 32)
    key = soft_targets.section_hash(soft_targets.key_inputs(view, projected, "train", 32))
    carried = soft_targets.find([view / soft_targets.FOLDER], key, len(data))
    assert carried is not None  # found where the chain looks: no teacher pass needed
    computed = predict_logits(AutoModelForSequenceClassification.from_pretrained(view), data, tokenizer.pad_token_id)
    np.testing.assert_allclose(carried, computed, atol=1e-4)
    assert not singles.carry_soft_targets(teacher, tiny_multitask_prepared, view, projected, "sentiment", 16)
