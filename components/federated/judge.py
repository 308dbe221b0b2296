"""The federated model's gate against the champion, decided from figures alone (`flows/federate.py` measures
them): its test accuracy on the pooled split may drop at most `max_pooled_drop_points` below the champion's,
and on any client's own test split at most `max_client_drop_points`; and how it compares to central
training on the union of the shards (reported, not gated: a champion has no central twin)."""

from __future__ import annotations

import math

from components.federated.config import FederatedConfig
from components.kit import gate


def drop_points(before: float | None, after: float | None) -> float:
    """Points lost from `before` to `after` (both 0..1); inf when either was not measured."""
    if before is None or after is None:
        return math.inf
    return 100.0 * (before - after)


def decide(
    cfg: FederatedConfig,
    pooled: tuple[float | None, float | None],
    per_client: dict[str, tuple[float | None, float | None]],
) -> gate.GateDecision:
    """`pooled` and each of `per_client` are (champion's accuracy, federated model's accuracy)."""
    pooled_drop = drop_points(*pooled)
    worst = max((drop_points(*pair) for pair in per_client.values()), default=0.0)
    return gate.GateDecision.of(
        {
            "pooled_drop_vs_champion_points": gate.Check(
                pooled_drop, cfg.max_pooled_drop_points, pooled_drop <= cfg.max_pooled_drop_points + gate.TOLERANCE
            ),
            "worst_client_drop_vs_champion_points": gate.Check(
                worst, cfg.max_client_drop_points, worst <= cfg.max_client_drop_points + gate.TOLERANCE
            ),
        }
    )


def versus_central(federated: dict[str, float], central: dict[str, float]) -> dict[str, float]:
    """Points the federated student is below the central one, per split name (negative: above)."""
    return {name: 100.0 * (central[name] - federated[name]) for name in federated if name in central}
