import math
import operator

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
