"""Which attention heads and FFN neurons to remove, from their importance scores: the selection both tasks'
prune stages share (the scores themselves depend on the architecture and stay with each stage)."""

from __future__ import annotations

import numpy as np


def normalise_per_layer(scores: list[np.ndarray]) -> list[np.ndarray]:
    return [s / (np.linalg.norm(s) + 1e-12) for s in scores]


def heads_to_prune(head_scores: list[np.ndarray], ratio: float | None = None,
                   count: int | None = None) -> dict[int, list[int]]:
    """The globally lowest-scoring `count` heads (or share `ratio` of them), never the last head of a layer.

    Indices are positions among each layer's current heads.
    """
    scores = normalise_per_layer(head_scores)
    total = sum(len(s) for s in scores)
    budget = count if count is not None else int(round(total * ratio))
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


def neurons_to_keep(ffn_scores: list[np.ndarray], ratio: float | None = None,
                    keep: int | None = None) -> list[np.ndarray]:
    """Per layer, the indices of the top `keep` (or top 1 - ratio) neurons, in their original order; the same
    count in every layer, so the config keeps one FFN width."""
    keep = keep if keep is not None else max(1, int(round(len(ffn_scores[0]) * (1.0 - ratio))))
    return [np.sort(np.argsort(-s, kind="stable")[:keep]) for s in ffn_scores]
