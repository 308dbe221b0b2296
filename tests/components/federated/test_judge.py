"""The federated gate against the champion, from figures alone, and the comparison with central training."""

from __future__ import annotations

import math

from components.federated import judge
from components.federated.config import FederatedConfig

CFG = FederatedConfig(max_pooled_drop_points=1.0, max_client_drop_points=2.0)


def test_passes_within_both_bounds():
    decision = judge.decide(CFG, (0.80, 0.795), {"movie": (0.82, 0.81), "tweets": (0.70, 0.72)})
    assert decision.passed
    assert math.isclose(decision.checks["worst_client_drop_vs_champion_points"].value, 1.0)


def test_a_client_dropping_too_far_refuses_it_even_when_the_pooled_figure_rises():
    decision = judge.decide(CFG, (0.80, 0.83), {"movie": (0.82, 0.79), "tweets": (0.70, 0.78)})
    assert decision.failed() == ["worst_client_drop_vs_champion_points"]


def test_a_figure_not_measured_refuses():
    assert not judge.decide(CFG, (0.8, None), {}).passed


def test_versus_central_in_points():
    assert judge.versus_central({"pooled": 0.80, "movie": 0.9}, {"pooled": 0.81}) == {"pooled": 1.0000000000000009}
