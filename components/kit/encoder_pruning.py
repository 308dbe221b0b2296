"""Gradient x activation importance of the attention heads and FFN neurons of a BERT-style encoder
classifier, and the physical narrowing of its FFNs: shared by the classification prune stage
(`components.classification.prune`) and student growth (`components.kit.grow`). Library code: nothing to run.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from transformers.pytorch_utils import prune_linear_layer

from components.kit.modeling import Encoded, collate, length_bucketed_batches, model_inputs, transformer_layers
from components.kit.pruning import head_scores, neuron_scores, retained_inputs
from components.kit.training import SINGLE_LABEL, Objective


def importance_scores(
    model: nn.Module,
    data: Encoded,
    teacher_logits: np.ndarray,
    pad_id: int,
    batches: int,
    batch_size: int,
    alpha: float,
    temperature: float,
    seed: int,
    objective: Objective = SINGLE_LABEL,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per layer: head scores (n_heads,) and FFN neuron scores (intermediate,), gradient x activation
    (`components.kit.pruning`) of the objective's loss: for multitask data, of every task's loss together."""
    layers = transformer_layers(model)
    totals_heads = [np.zeros(layer.attention.self.num_attention_heads) for layer in layers]
    totals_ffn = [np.zeros(layer.output.dense.in_features) for layer in layers]
    # Inputs of attention.output.dense: the heads' context vectors; of output.dense: the FFN activations.
    watched = {
        key: module
        for i, layer in enumerate(layers)
        for key, module in ((("ctx", i), layer.attention.output.dense), (("ffn", i), layer.output.dense))
    }
    model.eval()  # no dropout: scores should reflect the model as it will run
    order = length_bucketed_batches([len(x) for x in data.input_ids], batch_size, shuffle=True, seed=seed)
    try:
        with retained_inputs(watched) as captured:
            for index in order[:batches]:
                batch = model_inputs(model, collate(data.input_ids, index, pad_id))
                index_t = torch.as_tensor(index)
                logits = model(**batch).logits
                loss = objective.loss(
                    logits,
                    torch.as_tensor(teacher_logits)[index_t],
                    torch.as_tensor(data.labels[index], dtype=torch.long),
                    alpha,
                    temperature,
                )
                model.zero_grad(set_to_none=True)
                loss.backward()
                mask = batch["attention_mask"].unsqueeze(-1).float()
                for i, layer in enumerate(layers):
                    totals_heads[i] += head_scores(captured[("ctx", i)], mask, layer.attention.self.num_attention_heads)
                    totals_ffn[i] += neuron_scores(captured[("ffn", i)], mask)
    finally:
        model.zero_grad(set_to_none=True)
    return totals_heads, totals_ffn


def prune_ffn(model: nn.Module, keep: list[np.ndarray]) -> None:
    for layer, idx in zip(transformer_layers(model), keep):
        index = torch.as_tensor(idx, dtype=torch.long)
        layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, index, dim=0)
        layer.output.dense = prune_linear_layer(layer.output.dense, index, dim=1)
    model.config.intermediate_size = int(len(keep[0]))
