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


def test_uniform_heads_to_prune_takes_each_layers_own_weakest_in_equal_numbers():
    # Globally, layer 1's heads all score below layer 0's; uniformly, each layer still loses two.
    scores = [np.array([0.9, 0.1, 0.8, 0.7]), np.array([0.01, 0.04, 0.03, 0.02])]
    assert heads_to_prune(scores, count=4, uniform=True) == {0: [1, 3], 1: [0, 3]}
    assert heads_to_prune(scores, ratio=0.5, uniform=True) == {0: [1, 3], 1: [0, 3]}


def test_uniform_heads_budget_rounds_to_a_multiple_of_the_layer_count():
    scores = [np.array([0.4, 0.3, 0.2, 0.1])] * 3
    assert heads_to_prune(scores, count=7, uniform=True) == {i: [2, 3] for i in range(3)}  # 7 / 3 -> 2 each
    assert heads_to_prune(scores, count=5, uniform=True) == {i: [2, 3] for i in range(3)}  # 5 / 3 -> 2 each
    assert heads_to_prune(scores, count=4, uniform=True) == {i: [3] for i in range(3)}  # 4 / 3 -> 1 each
    assert heads_to_prune(scores, count=1, uniform=True) == {}  # 1 / 3 -> none


def test_uniform_heads_never_removes_a_layers_last_head():
    scores = [np.array([0.5, 0.2]), np.array([0.1, 0.3, 0.2, 0.4])]
    # 3 heads a layer asked for: the two-head layer keeps one, the other loses three
    assert heads_to_prune(scores, count=6, uniform=True) == {0: [1], 1: [0, 1, 2]}
    assert heads_to_prune(scores, ratio=0.99, uniform=True) == {0: [1], 1: [0, 1, 2]}


def test_neurons_to_keep_keeps_top_share_in_order():
    keep = neurons_to_keep([np.array([5.0, 1.0, 3.0, 0.0])], ratio=0.5)
    assert keep[0].tolist() == [0, 2]


def test_retained_inputs_scores_are_gradient_times_activation_and_hooks_go_away():
    import torch

    from components.kit.pruning import head_scores, neuron_scores, retained_inputs

    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 1)
    x = torch.randn(2, 3, 4)  # (batch, tokens, width): 2 heads of width 2, or 4 neurons
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]]).unsqueeze(-1).float()
    with retained_inputs({"dense": layer}) as captured:
        layer(x.clone().requires_grad_()).sum().backward()
        seen = captured["dense"]
    assert not layer._forward_pre_hooks  # removed on exit
    grad = layer.weight.detach()[0].expand_as(x)  # d(sum of outputs)/d input
    per_neuron = (x * grad * mask).sum(1).abs().sum(0)
    assert np.allclose(neuron_scores(seen, mask), per_neuron.numpy())
    per_head = (x * grad * mask).reshape(2, 3, 2, 2).sum(dim=(1, 3)).abs().sum(0)
    assert np.allclose(head_scores(seen, mask, n_heads=2), per_head.numpy())
