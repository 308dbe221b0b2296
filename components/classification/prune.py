"""Stage, prune: iterative structured pruning of attention heads and FFN neurons, each step with recovery.

Importance is gradient x activation (Michel et al., 2019; Molchanov et al., 2019): for a head, the
absolute sum over tokens of its context vector times the loss gradient with respect to it, which equals
|dL/d gate| for a gate on that head; for an FFN neuron, the same on its activation. Scores are summed
over `importance_batches` training batches, normalised per layer, and the lowest-scoring heads are
removed across all layers (at least one head stays in every layer); with `prune.uniform_heads`, the same
number from every layer instead, each layer's weakest (each step's cut rounded to a multiple of the layer
count), so that every layer keeps the same head count. FFN neurons are removed in the same share from
every layer so that the config keeps one `intermediate_size`. Both are physical removals (`prune_heads`,
sliced Linear layers): the saved model has fewer parameters. The selection from the scores
(`heads_to_prune`, `neurons_to_keep`) is `components.kit.pruning`, shared with the causal-lm prune stage.

Pruning is iterative (`prune.steps`): each step removes an equal part of the target, re-scoring the
surviving heads and neurons first, and is followed by a recovery fine-tune (`prune.epochs` per step) with
distillation from the stored teacher logits, so that later cuts are chosen on the recovered model.
Under a multi-process launch each recovery is data-parallel and every process cuts the same heads.

Pruning is accuracy-aware when `cfg.accuracy_budget_points` is a number (the flows turn the params' "auto"
into one): the ratios are then the most it removes. The teacher's validation accuracy, on the
same sentences cut to the same token limit, is the reference; after each step's recovery, a step that leaves
the student more than the budget below it is undone (the model as it was before that step's cut) and pruning
stops; a student that distillation already left over the budget is not cut at all. With
`cfg.budget_confidence` a step must also keep the one-sided upper bound of its spent points within the budget
plus `cfg.budget_margin_points` (`components.kit.budget`): on a small validation split that leaves little to
cut. The metrics say what the distilled student had already spent, what pruning spent, the kept model's
bound, and which step was undone; with no budget (None) every step is taken.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
from torch import nn
from transformers import AutoModelForSequenceClassification

from components.config import DistributedConfig, PruneConfig
from components.kit import soft_targets
from components.kit.budget import accuracy_budget
from components.kit.distributed import same_on_every_rank
from components.kit.encoder_pruning import importance_scores, prune_ffn
from components.kit.modeling import (
    Encoded,
    count_params,
    predict_logits,
    save_model,
    seed_everything,
    transformer_layers,
)
from components.kit.pruning import heads_to_prune, neurons_to_keep
from components.kit.soft_targets import student_data
from components.kit.tracking import PrefixedTracker, StageResult, Tracker
from components.kit.training import SINGLE_LABEL, Distillation, Objective, TaskMix, train


def step_targets(
    n_heads: int, n_neurons: int, head_ratio: float, ffn_ratio: float, steps: int, head_multiple: int = 1
) -> list[tuple[int, int]]:
    """Per step: (total heads removed so far, FFN neurons kept per layer), reaching the ratios at the last step.

    Head totals are rounded to the nearest multiple of `head_multiple` (the layer count when every layer
    loses the same number of heads), so each step's cut divides evenly over the layers.
    """
    return [
        (
            head_multiple * int(round(n_heads * head_ratio * k / steps / head_multiple)),
            max(1, int(round(n_neurons * (1.0 - ffn_ratio * k / steps)))),
        )
        for k in range(1, steps + 1)
    ]


def original_head_ids(model: nn.Module, plan: dict[int, list[int]]) -> dict[int, list[int]]:
    """Map positions among a layer's current heads to its original head ids, which `prune_heads` expects."""
    mapped = {}
    for layer_id, heads in plan.items():
        attention = transformer_layers(model)[layer_id].attention
        n_original = attention.self.num_attention_heads + len(attention.pruned_heads)
        alive = [h for h in range(n_original) if h not in attention.pruned_heads]
        mapped[layer_id] = [alive[h] for h in heads]
    return mapped


def n_heads(model: nn.Module) -> int:
    return sum(layer.attention.self.num_attention_heads for layer in transformer_layers(model))


def cut(
    model: nn.Module,
    train_split: Encoded,
    train_logits: np.ndarray,
    pad_id: int,
    cfg: PruneConfig,
    seed: int,
    heads_to_remove: int,
    neurons_kept: int,
    objective: Objective = SINGLE_LABEL,
) -> None:
    """One step's cut: re-score the surviving heads and neurons on the train split, then remove
    `heads_to_remove` more heads and narrow every FFN to `neurons_kept` neurons."""
    # Every process scores the same weights on the same batches; rank 0's scores cut, so all cut alike.
    by_head, by_neuron = same_on_every_rank(
        importance_scores(
            model,
            train_split,
            train_logits,
            pad_id,
            cfg.importance_batches,
            cfg.batch_size,
            cfg.alpha,
            cfg.temperature,
            seed,
            objective,
        )
    )
    plan = heads_to_prune(by_head, count=heads_to_remove, uniform=cfg.uniform_heads)
    model.prune_heads(original_head_ids(model, plan))
    if neurons_kept < model.config.intermediate_size:
        prune_ffn(model, neurons_to_keep(by_neuron, keep=neurons_kept))


def points(share: float) -> float:
    """An accuracy difference as percentage points."""
    return 100.0 * share


def run(
    cfg: PruneConfig,
    student_dir: Path,  # the model pruned, and its tokenizer
    teacher_dir: Path,  # only its soft targets are read: scoring and recovery learn from them
    prepared: Path,
    out_dir: Path,
    tracker: Tracker,
    seed: int,  # step k scores its batches and recovers with seed + k
    dist: DistributedConfig | None = None,
    soft_cache: Path | None = None,
    mix: TaskMix | None = None,  # how the tasks of multitask data share training
) -> StageResult:
    seed_everything(seed)
    model = AutoModelForSequenceClassification.from_pretrained(student_dir, use_safetensors=True)
    data = student_data(cfg, student_dir, teacher_dir, prepared, soft_cache, dist)
    pad_id, val = data.pad_id, data.splits["validation"]
    kd = Distillation(data.teacher_logits, cfg.alpha, cfg.temperature)
    objective, score = data.labels.objective(mix), data.labels.score
    tracker.log_params(cfg.model_dump())
    params_before, heads_before = count_params(model), n_heads(model)
    layers = transformer_layers(model)
    targets = step_targets(
        heads_before,
        layers[0].output.dense.in_features,
        cfg.head_ratio,
        cfg.ffn_ratio,
        cfg.steps,
        head_multiple=len(layers) if cfg.uniform_heads else 1,
    )

    budget = accuracy_budget(cfg.accuracy_budget_points, cfg.budget_margin_points, cfg.budget_confidence)
    student_logits = predict_logits(model, val, pad_id)
    student_val = score(student_logits, val.labels)
    reference = teacher_val = spent = None
    if budget is not None:
        teacher_val = soft_targets.load(teacher_dir, prepared, "validation", val, cfg.max_length, soft_cache, dist)
        reference = score(teacher_val, val.labels)
        spent = budget.spent(score, teacher_val, student_logits, val.labels)
        print(
            f"  prune: accuracy budget {budget.describe()} below the teacher's validation accuracy "
            f"{reference:.4f}; the distilled student is at {student_val:.4f}, {spent.describe()}",
            flush=True,
        )

    if spent is not None and not spent.within:
        # Distillation alone spent the budget: any cut would only add to it.
        print("  prune: the distilled student is already over the budget; nothing is cut", flush=True)
        targets = []

    history, seconds, removed, examples, undone = [], 0.0, 0, 0, None
    for step, (heads_removed_target, neurons_kept) in enumerate(targets, start=1):
        before = copy.deepcopy(model) if budget is not None else None
        # The train split's rows of the teacher's logits score the heads.
        cut(
            model,
            data.splits["train"],
            data.train_logits,
            pad_id,
            cfg,
            seed + step,
            heads_removed_target - removed,
            neurons_kept,
            objective,
        )
        removed = heads_before - n_heads(model)
        acc_cut = score(predict_logits(model, val, pad_id), val.labels)
        print(
            f"  prune step {step}/{cfg.steps}: {n_heads(model)} of {heads_before} heads, FFN "
            f"{model.config.intermediate_size} wide, params {count_params(model):,}; val acc before recovery "
            f"{acc_cut:.4f}",
            flush=True,
        )
        outcome = train(
            model,
            data.train_set,
            val,
            cfg,
            pad_id,
            PrefixedTracker(tracker, f"step{step}."),
            seed + step,
            kd=kd,
            desc=f"recover {step}/{cfg.steps}",
            dist=dist,
            objective=objective,
        )
        seconds += outcome.seconds
        examples += outcome.examples
        history.append(
            {
                "step": step,
                "heads": n_heads(model),
                "intermediate_size": model.config.intermediate_size,
                "params": count_params(model),
                "val_accuracy_before_recovery": acc_cut,
                "val_accuracy": outcome.best_val_accuracy,
            }
        )
        if budget is not None:
            # The recovery's best validation accuracy is the point estimate (its weights are the model's now);
            # its logits give the paired standard error.
            se = budget.standard_error(score, teacher_val, predict_logits(model, val, pad_id), val.labels)
            step_spent = budget.judge(points(reference - outcome.best_val_accuracy), se)
            history[-1]["spent_bound_points"] = step_spent.bound
            if not step_spent.within:
                # Over budget: this step is undone, and a deeper cut would only spend more.
                model, undone = before, step
                history[-1]["undone"] = True
                print(
                    f"  prune step {step}/{cfg.steps} undone: validation accuracy {outcome.best_val_accuracy:.4f}, "
                    f"{step_spent.describe()} against the teacher's, over the budget of {budget.describe()}; "
                    f"keeping {n_heads(model)} heads, FFN {model.config.intermediate_size} wide",
                    flush=True,
                )
                break
            spent = step_spent

    removed = heads_before - n_heads(model)
    kept = [row for row in history if not row.get("undone")]
    val_after = kept[-1]["val_accuracy"] if kept else student_val
    test = data.splits["test"]
    test_scores = data.labels.scores(predict_logits(model, test, pad_id), test.labels)
    pruned = {int(k): sorted(int(h) for h in v) for k, v in model.config.pruned_heads.items()}
    metrics = {
        "params_before": params_before,
        "params_after": count_params(model),
        "steps": cfg.steps,
        "heads_removed": removed,
        "heads_before": heads_before,
        "intermediate_size": model.config.intermediate_size,
        "val_accuracy_before_recovery": history[0]["val_accuracy_before_recovery"] if history else student_val,
        "val_accuracy": val_after,
        "student_val_accuracy": student_val,  # the distilled student's, before any cut
        "steps_taken": len(kept),
        "step_undone": undone or 0,  # the step undone for going over the budget; 0: none
        **(
            {
                "budget_points": budget.points,
                "budget_margin_points": budget.margin_points,
                "budget_confidence": budget.confidence,
                # the kept model's one-sided upper bound of its spent points (None: no confidence asked)
                "budget_spent_bound_points": spent.bound,
                "teacher_val_accuracy": reference,
                # what distillation had spent before pruning, and what pruning spent on top (points)
                "budget_spent_distill_points": points(reference - student_val),
                "budget_spent_prune_points": points(student_val - val_after),
            }
            if budget is not None
            else {}
        ),
        **{f"test_{key}": value for key, value in test_scores.items()},
        "train_seconds": seconds,
        "examples": examples,  # training rows processed over every recovery epoch (an update's cost is compared by it)
    }
    save_model(
        model, data.tokenizer, data.labels.names, out_dir, metrics | {"pruned_heads": pruned, "history": history}
    )
    tracker.log_params({"pruned_heads": str(pruned)})
    tracker.log_metrics(metrics)
    return StageResult(metrics=metrics, outputs={"model": out_dir})
