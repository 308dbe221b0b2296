import numpy as np

from components.kit.pruning import heads_to_prune, neurons_to_keep


def test_heads_to_prune_is_global_lowest_first_and_keeps_one_per_layer():
    scores = [np.array([0.9, 0.1, 0.8, 0.7]), np.array([0.01, 0.02, 0.03, 0.04])]
    plan = heads_to_prune(scores, ratio=0.25)  # 2 of 8 heads
    # Per-layer normalisation makes layer 1's relative weakest heads comparable with layer 0's.
    assert sum(map(len, plan.values())) == 2
    assert 1 in plan.get(0, [])
    everything = heads_to_prune(scores, ratio=0.99)
    assert all(len(h) == 3 for h in everything.values())


def test_neurons_to_keep_keeps_top_share_in_order():
    keep = neurons_to_keep([np.array([5.0, 1.0, 3.0, 0.0])], ratio=0.5)
    assert keep[0].tolist() == [0, 2]

