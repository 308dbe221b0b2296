import math
import operator

import numpy as np
import pytest
import torch

from components.kit.training import BestEpoch, Schedule, lr_at


def test_schedule_steps_through_linear_warmup_and_decay():
    schedule = Schedule.linear(1e-3, total=20, warmup_share=0.1)
    assert schedule.warmup == 2
    rates = [schedule.next_lr() for _ in range(20)]
    assert rates == [lr_at(step, 20, 2, 1e-3) for step in range(20)]
    assert rates[1] == max(rates) == 1e-3 and rates[-1] < rates[2] and schedule.step == 20
    assert Schedule.linear(1e-3, total=5, warmup_share=0.01).warmup == 1  # at least one warm-up step


def test_best_epoch_keeps_the_best_weights_and_counts_the_epochs_since():
    model = torch.nn.Linear(2, 1)
    best = BestEpoch(math.inf, operator.lt)  # lower is better (perplexity)
    best.update(5.0, 1, model)
    with torch.no_grad():
        model.weight.add_(1.0)
    best.update(7.0, 2, model)
    best.update(float("nan"), 3, model)  # never better
    assert (best.value, best.epoch, best.stale) == (5.0, 1, 2)
    assert not torch.equal(best.state["weight"], model.weight.detach().cpu())
    accuracy = BestEpoch(-1.0, operator.gt)
    accuracy.update(0.5, 1, model)
    assert (accuracy.value, accuracy.epoch, accuracy.stale) == (0.5, 1, 0)


def test_a_tie_in_validation_accuracy_goes_to_the_lower_validation_loss():
    model = torch.nn.Linear(2, 1)
    best = BestEpoch(-1.0, operator.gt)
    best.update(0.90, 1, model, tiebreak=0.40)
    best.update(0.90, 2, model, tiebreak=0.30)  # the same accuracy, still learning: not stale
    assert (best.value, best.epoch, best.stale, best.tiebreak) == (0.90, 2, 0, 0.30)
    best.update(0.90, 3, model, tiebreak=0.35)  # the same accuracy, a higher loss: stale
    best.update(0.90, 4, model, tiebreak=float("nan"))  # no loss breaks no tie
    best.update(0.89, 5, model, tiebreak=0.10)  # a lower accuracy loses whatever its loss
    assert (best.epoch, best.stale) == (2, 3)
    best.update(0.91, 6, model, tiebreak=0.50)  # a higher accuracy wins whatever its loss
    assert (best.value, best.epoch, best.stale) == (0.91, 6, 0)


def test_validation_loss_is_the_objectives_loss_on_the_labels_alone():
    from components.kit.training import SINGLE_LABEL, validation_loss

    logits = np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=np.float32)
    labels = np.array([0, 1, 1])
    expected = float(torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(labels)))
    assert validation_loss(SINGLE_LABEL, logits, labels) == pytest.approx(expected)
    assert math.isnan(validation_loss(SINGLE_LABEL, logits[:0], labels[:0]))


def test_frozen_word_embeddings_stay_as_they_start_while_the_rest_learns(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from components.config import TrainConfig
    from components.kit.modeling import encode
    from components.kit.tracking import NullTracker
    from components.kit.training import train
    from tests.conftest import NEGATIVE, POSITIVE, tiny_bert

    model_dir = tiny_bert(tmp_path / "model", dropout=0.0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    labels = ["positive"] * len(POSITIVE) + ["negative"] * len(NEGATIVE)
    data = encode(tokenizer, POSITIVE + NEGATIVE, labels, ["negative", "positive"], 16)
    table = model.get_input_embeddings().weight
    words, layer = table.detach().clone(), model.bert.encoder.layer[0].output.dense.weight.detach().clone()

    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2, patience=2, freeze_word_embeddings=True)
    train(model, data, data, cfg, tokenizer.pad_token_id, NullTracker(), seed=0)

    assert torch.equal(model.get_input_embeddings().weight, words)
    assert not torch.equal(model.bert.encoder.layer[0].output.dense.weight, layer)
    assert model.get_input_embeddings().weight.requires_grad  # as it was before training


def test_an_objective_with_draws_processes_that_many_rows_an_epoch(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from components.config import TrainConfig
    from components.kit.modeling import encode
    from components.kit.tracking import NullTracker
    from components.kit.training import Objective, train
    from tests.conftest import NEGATIVE, POSITIVE, tiny_bert

    model_dir = tiny_bert(tmp_path / "model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    labels = ["positive"] * len(POSITIVE) + ["negative"] * len(NEGATIVE)
    data = encode(tokenizer, POSITIVE + NEGATIVE, labels, ["negative", "positive"], 16)
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-3, patience=2)
    uniform = np.full(len(data), 1 / len(data))

    def examples(objective: Objective) -> int:
        model = AutoModelForSequenceClassification.from_pretrained(model_dir)
        return train(
            model, data, data, cfg, tokenizer.pad_token_id, NullTracker(), seed=0, objective=objective
        ).examples

    assert examples(Objective(sampling=lambda _labels: uniform)) == 2 * len(data)  # as many draws as rows
    assert examples(Objective(sampling=lambda _labels: uniform, draws=5)) == 2 * 5
    # without a sampling there is nothing to draw: every row once, `draws` or not
    assert examples(Objective(draws=5)) == 2 * len(data)
