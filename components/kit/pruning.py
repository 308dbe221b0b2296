"""Which attention heads and FFN neurons to remove, and the gradient x activation arithmetic that scores them:
what both tasks' prune stages share. Which modules to watch and which loss to score with depend on the
architecture and stay with each stage.

Scoring: `retained_inputs` keeps, for each watched module, the input of its latest forward pass with its
gradient after backward; `head_scores` and `neuron_scores` turn one batch's input and gradient into per-head
and per-neuron scores (|sum over tokens of activation x dLoss/dactivation|, Michel et al., 2019; Molchanov et
al., 2019), which a stage sums over batches.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from contextlib import contextmanager

import numpy as np


@contextmanager
def retained_inputs(modules: dict[Hashable, object]) -> Iterator[dict]:
    """While open: {key: the input tensor of that module's latest forward}, its `.grad` kept after backward
    (a forward pre-hook on each module, removed on exit)."""
    captured: dict = {}

    def keep(key):
        def hook(_module, args):
            args[0].retain_grad()
            captured[key] = args[0]

        return hook

    handles = [module.register_forward_pre_hook(keep(key)) for key, module in modules.items()]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def head_scores(context, mask, n_heads: int) -> np.ndarray:
    """One batch's score per head (n_heads,): `context` is the heads' concatenated context vectors (batch,
    tokens, width) with its gradient, `mask` (batch, tokens, 1) zero on padding."""
    prod = (context * context.grad * mask).reshape(*context.shape[:2], n_heads, -1)
    return prod.sum(dim=(1, 3)).abs().sum(0).detach().numpy()


def neuron_scores(activation, mask) -> np.ndarray:
    """One batch's score per FFN neuron (width,), from its activation (batch, tokens, width) and gradient."""
    return (activation * activation.grad * mask).sum(1).abs().sum(0).detach().numpy()


def normalise_per_layer(scores: list[np.ndarray]) -> list[np.ndarray]:
    return [s / (np.linalg.norm(s) + 1e-12) for s in scores]


def heads_to_prune(
    head_scores: list[np.ndarray], ratio: float | None = None, count: int | None = None, uniform: bool = False
) -> dict[int, list[int]]:
    """The globally lowest-scoring `count` heads (or share `ratio` of them), never the last head of a layer.

    With `uniform`, every layer loses the same number of heads, each its own lowest-scoring ones: the budget
    split evenly over the layers and rounded to the nearest whole number per layer (so to the nearest
    multiple of the layer count: 7 heads over 3 layers remove 2 from each), at most all but one of a
    layer's heads. Indices are positions among each layer's current heads.
    """
    total = sum(len(s) for s in head_scores)
    budget = count if count is not None else int(round(total * ratio))
    if uniform:
        return lowest_per_layer(head_scores, int(round(budget / len(head_scores))))
    scores = normalise_per_layer(head_scores)
    ranked = sorted((score, layer, head) for layer, s in enumerate(scores) for head, score in enumerate(s))
    remaining = [len(s) for s in scores]
    chosen: dict[int, list[int]] = {}
    for _, layer, head in ranked:
        if budget == 0:
            break
        if remaining[layer] > 1:
            chosen.setdefault(layer, []).append(int(head))
            remaining[layer] -= 1
            budget -= 1
    return {layer: sorted(heads) for layer, heads in sorted(chosen.items())}


def lowest_per_layer(head_scores: list[np.ndarray], per_layer: int) -> dict[int, list[int]]:
    """{layer: its `per_layer` lowest-scoring heads}, keeping at least one head in every layer; a layer
    that loses none is left out, as `heads_to_prune` leaves it out."""
    plan = {
        layer: sorted(int(h) for h in np.argsort(s, kind="stable")[: min(per_layer, len(s) - 1)])
        for layer, s in enumerate(head_scores)
    }
    return {layer: heads for layer, heads in plan.items() if heads}


def neurons_to_keep(
    ffn_scores: list[np.ndarray], ratio: float | None = None, keep: int | None = None
) -> list[np.ndarray]:
    """Per layer, the indices of the top `keep` (or top 1 - ratio) neurons, in their original order; the same
    count in every layer, so the config keeps one FFN width."""
    keep = keep if keep is not None else max(1, int(round(len(ffn_scores[0]) * (1.0 - ratio))))
    return [np.sort(np.argsort(-s, kind="stable")[:keep]) for s in ffn_scores]
