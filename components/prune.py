"""Stage 5, prune: structured pruning of attention heads (and FFN neurons), then a recovery fine-tune.

Importance is gradient x activation (Michel et al., 2019; Molchanov et al., 2019): for a head, the
absolute sum over tokens of its context vector times the loss gradient with respect to it, which equals
|dL/d gate| for a gate on that head; for an FFN neuron, the same on its activation. Scores are summed
over `importance_batches` training batches, normalised per layer, and the lowest-scoring heads are
removed across all layers (at least one head stays in every layer); FFN neurons are removed in the same
share from every layer so that the config keeps one `intermediate_size`. Both are physical removals
(`prune_heads`, sliced Linear layers): the saved model has fewer parameters. A recovery fine-tune with
distillation from the stored teacher logits follows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.pytorch_utils import prune_linear_layer

from components.config import PruneConfig
from components.distill import training_set
from components.finetune import load_encoded_splits, read_labels, save_model
from components.losses import kd_loss
from components.modeling import (Encoded, accuracy, collate, count_params, length_bucketed_batches, model_inputs,
                                 predict_logits, seed_everything, transformer_layers)
from components.tracking import StageResult, Tracker
from components.training import Distillation, train


def importance_scores(model: nn.Module, data: Encoded, teacher_logits: np.ndarray, pad_id: int, batches: int,
                      batch_size: int, alpha: float, temperature: float, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per layer: head scores (n_heads,) and FFN neuron scores (intermediate,), gradient x activation."""
    layers = transformer_layers(model)
    head_scores = [np.zeros(layer.attention.self.num_attention_heads) for layer in layers]
    ffn_scores = [np.zeros(layer.output.dense.in_features) for layer in layers]
    captured: dict[tuple[str, int], torch.Tensor] = {}

    def keep_input(kind: str, i: int):
        def hook(_module, args):
            args[0].retain_grad()
            captured[(kind, i)] = args[0]
        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.attention.output.dense.register_forward_pre_hook(keep_input("ctx", i)))
        handles.append(layer.output.dense.register_forward_pre_hook(keep_input("ffn", i)))
    model.eval()  # no dropout: scores should reflect the model as it will run
    order = length_bucketed_batches([len(x) for x in data.input_ids], batch_size, shuffle=True, seed=seed)
    try:
        for index in order[:batches]:
            batch = model_inputs(model, collate(data.input_ids, index, pad_id))
            index_t = torch.as_tensor(index)
            logits = model(**batch).logits
            loss = kd_loss(logits, torch.as_tensor(teacher_logits)[index_t],
                           torch.as_tensor(data.labels[index], dtype=torch.long), alpha, temperature)
            model.zero_grad(set_to_none=True)
            loss.backward()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            for i, layer in enumerate(layers):
                ctx = captured[("ctx", i)]
                n_heads = layer.attention.self.num_attention_heads
                prod = (ctx * ctx.grad * mask).reshape(*ctx.shape[:2], n_heads, -1)
                head_scores[i] += prod.sum(dim=(1, 3)).abs().sum(0).detach().numpy()
                ffn = captured[("ffn", i)]
                ffn_scores[i] += (ffn * ffn.grad * mask).sum(1).abs().sum(0).detach().numpy()
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
    return head_scores, ffn_scores


def normalise_per_layer(scores: list[np.ndarray]) -> list[np.ndarray]:
    return [s / (np.linalg.norm(s) + 1e-12) for s in scores]


def heads_to_prune(head_scores: list[np.ndarray], ratio: float) -> dict[int, list[int]]:
    """The globally lowest-scoring share `ratio` of heads, never the last head of a layer."""
    scores = normalise_per_layer(head_scores)
    total = sum(len(s) for s in scores)
    budget = int(round(total * ratio))
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


def neurons_to_keep(ffn_scores: list[np.ndarray], ratio: float) -> list[np.ndarray]:
    """Per layer, the indices of the top (1 - ratio) neurons, in their original order."""
    keep = max(1, int(round(len(ffn_scores[0]) * (1.0 - ratio))))
    return [np.sort(np.argsort(-s, kind="stable")[:keep]) for s in ffn_scores]


def prune_ffn(model: nn.Module, keep: list[np.ndarray]) -> None:
    for layer, idx in zip(transformer_layers(model), keep):
        index = torch.as_tensor(idx, dtype=torch.long)
        layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, index, dim=0)
        layer.output.dense = prune_linear_layer(layer.output.dense, index, dim=1)
    model.config.intermediate_size = int(len(keep[0]))


def run(cfg: PruneConfig, student_dir: Path, teacher_dir: Path, prepared: Path, out_dir: Path, tracker: Tracker,
        seed: int) -> StageResult:
    seed_everything(seed)
    labels = read_labels(prepared)
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    model = AutoModelForSequenceClassification.from_pretrained(student_dir)
    data = load_encoded_splits(prepared, tokenizer, labels, cfg.max_length)
    train_set, train_logits = training_set(teacher_dir, prepared, tokenizer, labels, cfg.max_length,
                                           data["train"], cfg.transfer)
    params_before = count_params(model)
    heads_before = sum(layer.attention.self.num_attention_heads for layer in transformer_layers(model))

    # The train split comes first in train_set: its rows of train_logits score the heads.
    head_scores, ffn_scores = importance_scores(model, data["train"], train_logits[: len(data["train"])], tokenizer.pad_token_id,
                                                cfg.importance_batches, cfg.batch_size, cfg.alpha,
                                                cfg.temperature, seed)
    plan = heads_to_prune(head_scores, cfg.head_ratio)
    model.prune_heads(plan)
    if cfg.ffn_ratio > 0:
        prune_ffn(model, neurons_to_keep(ffn_scores, cfg.ffn_ratio))
    params_after = count_params(model)
    acc_before_recovery = accuracy(predict_logits(model, data["validation"], tokenizer.pad_token_id),
                                   data["validation"].labels)
    print(f"  prune: removed {sum(map(len, plan.values()))} of {heads_before} heads, "
          f"params {params_before:,} -> {params_after:,}; val acc before recovery {acc_before_recovery:.4f}", flush=True)
    tracker.log_params(cfg.model_dump() | {"pruned_heads": str(plan)})

    kd = Distillation(train_logits, cfg.alpha, cfg.temperature)
    outcome = train(model, train_set, data["validation"], cfg, tokenizer.pad_token_id, tracker, seed,
                    kd=kd, desc="recover")

    test_acc = accuracy(predict_logits(model, data["test"], tokenizer.pad_token_id), data["test"].labels)
    metrics = {"params_before": params_before, "params_after": params_after,
               "heads_removed": sum(map(len, plan.values())), "heads_before": heads_before,
               "intermediate_size": model.config.intermediate_size,
               "val_accuracy_before_recovery": acc_before_recovery, "val_accuracy": outcome.best_val_accuracy,
               "test_accuracy": test_acc, "train_seconds": outcome.seconds}
    save_model(model, tokenizer, labels, out_dir, metrics | {"pruned_heads": plan})
    tracker.log_metrics(metrics)
    return StageResult(metrics=metrics, outputs={"model": out_dir})
