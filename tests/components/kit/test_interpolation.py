"""Weight interpolation: the mixed state lies on the line between the two models, and the share chosen is
the best mean validation accuracy that keeps every earlier batch within the budget."""

from __future__ import annotations

import pytest
import torch

from components.kit.interpolation import choose_share, largest_drop, mixed_state


def test_mixed_state_lies_between_start_and_trained_and_keeps_integer_tensors():
    start = {"w": torch.zeros(2, 2), "ids": torch.tensor([0, 1])}
    trained = {"w": torch.full((2, 2), 4.0), "ids": torch.tensor([0, 1])}
    mixed = mixed_state(start, trained, 0.25)
    assert torch.equal(mixed["w"], torch.ones(2, 2)) and mixed["ids"].dtype == torch.int64
    assert torch.equal(mixed_state(start, trained, 0.0)["w"], start["w"])
    assert torch.equal(mixed_state(start, trained, 1.0)["w"], trained["w"])


def test_mixed_state_refuses_models_of_different_shapes():
    with pytest.raises(ValueError, match="shape"):
        mixed_state({"w": torch.zeros(2)}, {"w": torch.zeros(3)}, 0.5)
    with pytest.raises(ValueError, match="differ in their tensors"):
        mixed_state({"w": torch.zeros(2)}, {"v": torch.zeros(2)}, 0.5)


ACCURACY = {  # old batch falls as more of the update is kept; the new batch rises
    0.0: {"new": 0.60, "old": 0.900},
    0.5: {"new": 0.80, "old": 0.897},
    1.0: {"new": 0.86, "old": 0.880},
}


def test_choose_share_keeps_the_best_mean_within_the_budget():
    assert largest_drop(ACCURACY, 1.0, "new") == pytest.approx(2.0)
    assert largest_drop(ACCURACY, 0.5, "new") == pytest.approx(0.3)
    assert choose_share(ACCURACY, "new", budget_points=0.5) == 0.5  # 1.0 has the best mean but drops 2 points
    assert choose_share(ACCURACY, "new", budget_points=5.0) == 1.0
    assert choose_share(ACCURACY, "new", budget_points=0.0) == 0.0  # the start always qualifies


def test_choose_share_needs_the_start():
    with pytest.raises(ValueError, match="share 0"):
        choose_share({1.0: {"new": 0.9}}, "new", 1.0)
