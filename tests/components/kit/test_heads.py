import math

import numpy as np
import pytest
import torch
from transformers import BertConfig

from components.kit.heads import MISSING, Heads
from components.kit.losses import kd_loss
from components.kit.training import TaskMix

HEADS = Heads.of({"sentiment": ["negative", "positive"], "source": ["movie", "tweet", "nyt"]})


def test_slices_and_config_fields_name_every_logit():
    assert HEADS.width == 5 and HEADS.slices == {"sentiment": slice(0, 2), "source": slice(2, 5)}
    fields = HEADS.config_fields()
    assert fields["id2label"][3] == "source:tweet" and fields["num_labels"] == 5
    config = BertConfig(**fields)
    assert Heads.from_config(BertConfig.from_dict(config.to_dict())) == HEADS


def test_the_task_order_survives_config_json(tmp_path):
    """transformers writes config.json with sorted keys: the tasks must come back in logit order."""
    heads = Heads.of({"zeta": ["b", "a"], "alpha": ["x", "y", "z"]})
    heads.configure(BertConfig()).save_pretrained(tmp_path)
    assert Heads.from_config(BertConfig.from_pretrained(tmp_path)) == heads


def test_from_config_refuses_a_single_task_model():
    with pytest.raises(ValueError, match="task_heads"):
        Heads.from_config(BertConfig(num_labels=2))


def test_masked_loss_leaves_a_missing_label_out_of_its_task():
    student = torch.tensor([[1.0, -1.0, 0.0, 2.0, 0.1], [0.3, 0.2, 1.0, 0.0, -1.0]])
    labels = torch.tensor([[0, 1], [MISSING, 2]])  # row 2 has no sentiment label
    expected = torch.nn.functional.cross_entropy(student[:1, :2], labels[:1, 0]) + torch.nn.functional.cross_entropy(
        student[:, 2:], labels[:, 1]
    )
    assert math.isclose(HEADS.loss(student, None, labels, 0.5, 2.0).item(), expected.item(), rel_tol=1e-6)
    # A task with no label anywhere in the batch adds nothing (and no NaN).
    none = torch.tensor([[MISSING, 1], [MISSING, 2]])
    only_source = torch.nn.functional.cross_entropy(student[:, 2:], none[:, 1])
    assert math.isclose(HEADS.loss(student, None, none, 0.5, 2.0).item(), only_source.item(), rel_tol=1e-6)


def test_with_a_teacher_a_missing_label_learns_from_its_soft_outputs_and_weights_apply():
    student = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    teacher = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([[0, 1], [MISSING, 2], [1, MISSING]])
    got = HEADS.loss(student, teacher, labels, 0.3, 2.0, weights={"sentiment": 2.0, "source": 0.5})
    expected = 2.0 * kd_loss(student[:, :2], teacher[:, :2], labels[:, 0], 0.3, 2.0) + 0.5 * kd_loss(
        student[:, 2:], teacher[:, 2:], labels[:, 1], 0.3, 2.0
    )
    assert math.isclose(got.item(), expected.item(), rel_tol=1e-6)


def test_accuracies_count_only_labelled_rows():
    logits = np.array([[2.0, 0.0, 0.0, 1.0, 0.0], [0.0, 2.0, 3.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0, 1.0]])
    labels = np.array([[0, 1], [MISSING, 0], [0, 2]])
    assert HEADS.accuracies(logits, labels) == {"sentiment": 0.5, "source": 1.0}
    assert HEADS.mean_accuracy(logits, labels) == 0.75


def test_the_training_loop_learns_every_task_with_masked_labels(tmp_path):
    """A tiny BERT with one head per task learns two tasks from rows that each lack one label or none."""
    import pandas as pd
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from components.config import TrainConfig
    from components.kit.modeling import predict_logits
    from components.kit.tracking import NullTracker
    from components.kit.training import train
    from tests.conftest import NEGATIVE, POSITIVE, tiny_bert

    heads = Heads.of({"mood": ["sad", "happy"], "topic": ["film", "food", "sport"]})
    topics = {"film": "movie", "food": "soup", "sport": "match"}
    pairs = [
        (mood, t, f"{phrase} about the {word}")
        for mood, phrases in (("happy", POSITIVE), ("sad", NEGATIVE))
        for phrase in phrases
        for t, word in topics.items()
    ]
    # Every third row lacks its mood, every third (other) row its topic.
    rows = [
        {"text": text, "mood": None if i % 3 == 0 else m, "topic": None if i % 3 == 1 else t}
        for i, (m, t, text) in enumerate(pairs)
    ]
    frame = pd.DataFrame(rows)
    model_dir = tiny_bert(tmp_path / "model", dropout=0.0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = heads.configure(AutoConfig.from_pretrained(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, config=config, ignore_mismatched_sizes=True)
    data = heads.encode(tokenizer, frame, 16)
    assert (data.labels == MISSING).sum() == 2 * len(rows) // 3
    cfg = TrainConfig(epochs=12, batch_size=8, lr=1e-2, patience=12)
    objective = heads.objective(TaskMix({"topic": 2.0}))
    outcome = train(model, data, data, cfg, tokenizer.pad_token_id, NullTracker(), seed=0, objective=objective)
    scores = heads.accuracies(predict_logits(model, data, tokenizer.pad_token_id), data.labels)
    # Both tasks learned far above chance (1/2 and 1/3), each from the rows that have its label.
    assert min(scores.values()) >= 0.9 and outcome.best_val_accuracy == pytest.approx(np.mean(list(scores.values())))


def test_balanced_draw_gives_every_task_an_equal_share_of_draws():
    from components.kit.heads import balanced_draw

    # task 0 labelled on every row, task 1 on the first two only; the last row has no label at all
    labels = np.array([[0, 1], [1, 0], [0, MISSING], [1, MISSING], [MISSING, MISSING]])
    p = balanced_draw(labels)
    assert p.sum() == pytest.approx(1.0)
    assert p[:2].sum() == pytest.approx(p[:4].sum() - p[2:4].sum())  # rows 0-1 carry task 1's whole share
    share_task1 = p[:2].sum() / p[:4].sum()
    assert share_task1 == pytest.approx((2 * (1 / 4 + 1 / 2)) / (4 / 4 + 2 / 2))
    assert p[4] == pytest.approx(p[:4].mean())  # an unlabelled row weighs the labelled rows' mean
    assert balanced_draw(np.array([0, 1, 1])) is None  # one label per row: every row once
    assert balanced_draw(np.full((3, 2), MISSING)) is None


def test_the_balanced_objective_samples_and_the_plain_one_does_not():
    assert HEADS.objective(TaskMix(balanced=True)).sampling is not None
    assert HEADS.objective(TaskMix()).sampling is None and HEADS.objective().sampling is None
