"""Weight interpolation against forgetting: after an update, the trained weights are pulled back toward the
weights the update started from, by the share that validation over every batch seen says serves them best.

Fine-tuning moves a model along a path from the old solution to one fitted to the new batch; points between
the two ends keep most of the new batch's gain while giving back most of what the old batches lost
(WiSE-FT, Wortsman et al. 2022; model soups). Choosing the point costs a few validation passes and no
training. `choose_share` reads accuracy per batch at each share of the grid and keeps the share with the
best mean over batches among those whose largest drop on an earlier batch, against share 0 (the start),
stays within a budget; share 0 always qualifies, so a choice always exists.

    mixed = mixed_state(start, trained, share)   # start + share * (trained - start), tensor by tensor
"""

from __future__ import annotations

import torch

# Shares of the update kept: 0 is the model the update started from, 1 the trained model as it is.
SHARES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def mixed_state(start: dict[str, torch.Tensor], trained: dict[str, torch.Tensor], share: float) -> dict:
    """The state dict `start + share * (trained - start)`; tensors that are not floating point (position
    ids, counters) are taken from `trained`."""
    if start.keys() != trained.keys():
        raise ValueError("the two models differ in their tensors; only models of one architecture mix")
    mixed = {}
    for name, weight in trained.items():
        if start[name].shape != weight.shape:
            raise ValueError(f"{name}: shape {tuple(start[name].shape)} against {tuple(weight.shape)}")
        mixed[name] = start[name] + share * (weight - start[name]) if weight.is_floating_point() else weight
    return mixed


def largest_drop(accuracy: dict[float, dict[str, float]], share: float, new: str) -> float:
    """Points lost at `share` against share 0 on the worst earlier batch (every batch but `new`); 0 when
    there is none or none dropped."""
    base = accuracy[0.0]
    drops = [100 * (base[b] - accuracy[share][b]) for b in base if b != new]
    return max([0.0, *drops])


def mean_accuracy(per_batch: dict[str, float]) -> float:
    return sum(per_batch.values()) / len(per_batch)


def choose_share(accuracy: dict[float, dict[str, float]], new: str, budget_points: float) -> float:
    """The share (a key of `accuracy`, which holds 0.0) with the best mean validation accuracy over batches,
    among those losing at most `budget_points` on any earlier batch; ties go to the larger share (more of
    the new batch learned)."""
    if 0.0 not in accuracy:
        raise ValueError("the accuracy of share 0 (the model the update started from) is the reference")
    allowed = [s for s in accuracy if largest_drop(accuracy, s, new) <= budget_points]
    return max(allowed, key=lambda s: (round(mean_accuracy(accuracy[s]), 12), s))
