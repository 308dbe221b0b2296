"""Stage, distill: a shallower student initialised from a subset of the teacher's layers.

The student is a copy of the fine-tuned teacher that keeps only `distill.layers` (embeddings, pooler and
classifier come along), trained on alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * CE against
the teacher logits the finetune stage stored once (`components.kit.soft_targets`). With `distill.hidden_weight` or
`distill.attention_weight` above zero, the student also learns the teacher's intermediate layers
(TinyBERT-style, `FeatureTransfer`): the teacher then runs, frozen, beside the student. With `distill.transfer`
the unlabelled transfer set joins the train split, learning from the teacher's soft outputs alone.

With `distill.ablation` the same student (same layers, initialisation, epochs) is also trained so that each
factor shows on its own: on the labels alone (`ablation.labels_only.*` in metrics.json) and, when the
transfer set was used, distilled on the train split alone (`ablation.kd_train_only.*`). With the stage's
own student (KD + transfer set) that makes three; without a transfer set the stage's student is the
KD-on-train one and two suffice. A test split with no rows gives test accuracy None, not a number.

Given an accuracy budget (the prune stage's, `components.kit.budget`), a student over it on validation is
replaced by the next of `distill.deeper_layers`, until one is within it or none is left; the ablation students
then take the chosen layers. `layers` and `tried` in the student's metrics.json say which ones were trained.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification

from components.config import DistillConfig, DistributedConfig
from components.kit import soft_targets
from components.kit.budget import AccuracyBudget
from components.kit.losses import attention_kl, hidden_mse
from components.kit.modeling import (
    Encoded,
    count_params,
    predict_logits,
    save_model,
    seed_everything,
    set_transformer_layers,
    transformer_layers,
)
from components.kit.soft_targets import StudentData, student_data
from components.kit.sources import ModelSourceError
from components.kit.tracking import PrefixedTracker, StageResult, Tracker
from components.kit.training import Distillation, TaskMix, train


def keep_layers(model: nn.Module, layers: list[int]) -> nn.Module:
    """Keep only the given transformer blocks, in order, and record the new depth in the config."""
    blocks = transformer_layers(model)
    if max(layers) >= len(blocks):
        raise ModelSourceError(
            f"distill.layers {layers} asks for layer {max(layers)}, "
            f"but the teacher has {len(blocks)} layers (0..{len(blocks) - 1})"
        )
    set_transformer_layers(model, nn.ModuleList(blocks[i] for i in layers))
    for attr in ("num_hidden_layers", "n_layers", "n_layer"):
        if hasattr(model.config, attr):
            setattr(model.config, attr, len(layers))
    return model


class FeatureTransfer(nn.Module):
    """Hidden-state and attention-map transfer from the frozen teacher (Jiao et al., 2020, TinyBERT).

    Student block i was copied from teacher block layers[i] and stands for the teacher's blocks up to the
    next kept layer, so its output is matched with the teacher's output at the end of that span, and its
    attention with the attention of the span's last block; the embedding outputs are matched too. Where the
    widths differ, a learned linear projection maps the student's hidden states to the teacher's width.
    """

    def __init__(
        self, teacher: nn.Module, layers: list[int], student_width: int, hidden_weight: float, attention_weight: float
    ):
        super().__init__()
        # A tuple, not a submodule: the teacher is frozen and its weights stay out of the optimizer.
        self._teacher = (teacher.eval().requires_grad_(False),)
        depth = teacher.config.num_hidden_layers
        self.ends = [layers[i + 1] if i + 1 < len(layers) else depth for i in range(len(layers))]
        width = teacher.config.hidden_size
        self.project = nn.Linear(student_width, width) if student_width != width else nn.Identity()
        self.hidden_weight, self.attention_weight = hidden_weight, attention_weight

    def forward(self, student_out, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # The teacher is out of `.to()`'s reach (not a submodule): it follows the batch to the training device.
        teacher = self._teacher[0].to(batch["input_ids"].device)
        with torch.no_grad():
            teacher_out = teacher(**batch, output_hidden_states=True, output_attentions=self.attention_weight > 0)
        mask = batch["attention_mask"]
        loss = student_out.logits.new_zeros(())
        if self.hidden_weight > 0:
            pairs = [(0, 0)] + [(i + 1, end) for i, end in enumerate(self.ends)]
            loss = loss + self.hidden_weight * sum(
                hidden_mse(self.project(student_out.hidden_states[s]), teacher_out.hidden_states[t], mask)
                for s, t in pairs
            ) / len(pairs)
        if self.attention_weight > 0:
            loss = loss + self.attention_weight * sum(
                attention_kl(student_out.attentions[i], teacher_out.attentions[end - 1], mask)
                for i, end in enumerate(self.ends)
            ) / len(self.ends)
        return loss


def test_scores(model: nn.Module, data: StudentData) -> dict[str, float | None]:
    """The test split's scores (`accuracy`, and each task's for multitask data); accuracy None when the split
    has no rows (an accuracy of nothing is not 0)."""
    test = data.splits["test"]
    if not len(test.labels):
        return {"accuracy": None}
    return data.labels.scores(predict_logits(model, test, data.pad_id), test.labels)


def shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def learns_features(cfg: DistillConfig) -> bool:
    """Whether the student also learns the teacher's intermediate layers (which then runs beside it)."""
    return cfg.hidden_weight > 0 or cfg.attention_weight > 0


def fresh_student(cfg: DistillConfig, teacher_dir: Path, seed: int, features: bool) -> nn.Module:
    """The student before training: the teacher's kept layers, the same for every student of one seed."""
    seed_everything(seed)
    # Attention maps come out of the eager attention kernels only.
    load = dict(attn_implementation="eager") if features else {}
    return keep_layers(
        AutoModelForSequenceClassification.from_pretrained(teacher_dir, use_safetensors=True, **load), cfg.layers
    )


def distilled(
    cfg: DistillConfig,
    teacher_dir: Path,
    student: nn.Module,
    train_set: Encoded,
    teacher_logits: np.ndarray | None,
    data: StudentData,
    tracker: Tracker,
    seed: int,
    desc: str,
    dist: DistributedConfig | None,
    mix: TaskMix | None = None,
) -> tuple[dict, dict[str, float | None]]:
    """Train `student` on `train_set` against the teacher's logits (and intermediate layers when asked), or
    on the labels alone when `teacher_logits` is None; returns (training metrics, test scores). `mix`: how
    the tasks of multitask data share training."""
    kd = None
    if teacher_logits is not None:
        transfer = None
        if learns_features(cfg):
            teacher = AutoModelForSequenceClassification.from_pretrained(
                teacher_dir, use_safetensors=True, attn_implementation="eager"
            )
            transfer = FeatureTransfer(
                teacher, cfg.layers, student.config.hidden_size, cfg.hidden_weight, cfg.attention_weight
            )
        kd = Distillation(teacher_logits, cfg.alpha, cfg.temperature, features=transfer)
    val, objective = data.splits["validation"], data.labels.objective(mix)
    outcome = train(
        student, train_set, val, cfg, data.pad_id, tracker, seed, kd=kd, desc=desc, dist=dist, objective=objective
    )
    return (
        {
            "val_accuracy": outcome.best_val_accuracy,
            "best_epoch": outcome.best_epoch,
            "epochs_run": outcome.epochs_run,
            "train_seconds": outcome.seconds,
            "examples": outcome.examples,  # training rows processed over every epoch run
        },
        test_scores(student, data),
    )


# The ablation students, each the stage's student (same layers, same initialisation) trained another way, by
# the name their metrics go under (`ablation.<name>.*`): (learns from the teacher's logits, progress-bar
# label, what the log line says it learned from).
ABLATION_STUDENTS = {
    # the labels alone, no teacher
    "labels_only": (False, "ablation (no teacher)", "on the labels alone"),
    # distilled like the stage's student on the train split alone (no transfer set), so that the transfer
    # set's gain and distillation's gain are measured apart
    "kd_train_only": (True, "ablation (distilled, train split only)", "distilled on the train split alone"),
}


def ablation_student(
    cfg: DistillConfig,
    teacher_dir: Path,
    data: StudentData,
    tracker: Tracker,
    seed: int,
    dist: DistributedConfig | None,
    name: str,
    mix: TaskMix | None = None,
) -> dict[str, float | None]:
    """Train the ablation student `name` (`ABLATION_STUDENTS`) on the train split; its metrics under
    `ablation.<name>.`."""
    taught, desc, how = ABLATION_STUDENTS[name]
    prefix = f"ablation.{name}."
    student = fresh_student(cfg, teacher_dir, seed, features=taught and learns_features(cfg))
    fit, test = distilled(
        cfg,
        teacher_dir,
        student,
        data.splits["train"],
        data.train_logits if taught else None,
        data,
        PrefixedTracker(tracker, prefix),
        seed,
        desc,
        dist,
        mix,
    )
    test_acc = test["accuracy"]
    print(f"  ablation: the same student {how} reaches test acc {shown(test_acc)}", flush=True)
    return {
        f"{prefix}val_accuracy": fit["val_accuracy"],
        f"{prefix}test_accuracy": test_acc,
        f"{prefix}train_seconds": fit["train_seconds"],
    }


def run(
    cfg: DistillConfig,
    teacher_dir: Path,  # the fine-tuned teacher: the student's layers, its tokenizer and the soft targets
    prepared: Path,
    out_dir: Path,
    tracker: Tracker,
    seed: int,  # the student's initialisation and batch order; the ablation students use the same
    dist: DistributedConfig | None = None,
    soft_cache: Path | None = None,
    mix: TaskMix | None = None,  # how the tasks of multitask data share training
    budget: AccuracyBudget | None = None,  # with one, `cfg.deeper_layers` are tried while the student is over it
) -> StageResult:
    data = student_data(cfg, teacher_dir, teacher_dir, prepared, soft_cache, dist)
    depth = AutoConfig.from_pretrained(teacher_dir).num_hidden_layers
    tracker.log_params(cfg.model_dump() | {"train_rows": len(data.train_set)})

    tried, candidates = [], student_layers(cfg, depth, budget)
    val = data.splits["validation"]
    teacher_val = None  # the teacher's validation logits, read once when a student is judged
    for layers in candidates:
        if tried:
            print(f"  distill: a deeper student, layers {layers}, in its place", flush=True)
        chosen = cfg.model_copy(update={"layers": layers})
        student = fresh_student(chosen, teacher_dir, seed, features=learns_features(chosen))
        log = tracker if not tried else PrefixedTracker(tracker, f"L{'-'.join(map(str, layers))}.")
        fit, test = distilled(
            chosen, teacher_dir, student, data.train_set, data.teacher_logits, data, log, seed, "distill", dist, mix
        )
        row = {"layers": layers, "val_accuracy": fit["val_accuracy"], "test_accuracy": test["accuracy"]}
        tried.append(row)
        if budget is None or len(tried) == len(candidates):
            break  # nothing deeper to try: the prune stage judges this one
        if teacher_val is None:
            teacher_val = soft_targets.load(teacher_dir, prepared, "validation", val, cfg.max_length, soft_cache, dist)
        spent = budget.spent(data.labels.score, teacher_val, predict_logits(student, val, data.pad_id), val.labels)
        row |= {"spent_points": spent.points, "spent_bound_points": spent.bound, "within_budget": spent.within}
        verdict = "within" if spent.within else "over"
        print(
            f"  distill: the {len(layers)}-layer student spent {spent.describe()} of the teacher's validation "
            f"accuracy: {verdict} the budget of {budget.describe()}",
            flush=True,
        )
        if spent.within:
            break

    test_acc = test["accuracy"]
    metrics = {
        **fit,
        **{f"test_{key}": value for key, value in test.items()},
        "params": count_params(student),
        "layers_kept": len(chosen.layers),
        "students_tried": len(tried),
        "transfer_rows": data.transfer_rows,
    }
    if cfg.ablation:
        metrics |= ablation_student(chosen, teacher_dir, data, tracker, seed, dist, "labels_only", mix)
        if data.transfer_rows:
            metrics |= ablation_student(chosen, teacher_dir, data, tracker, seed, dist, "kd_train_only", mix)
    save_model(student, data.tokenizer, data.labels.names, out_dir, metrics | {"layers": chosen.layers, "tried": tried})
    tracker.log_metrics({"test_accuracy": test_acc, "best_val_accuracy": fit["val_accuracy"]})
    return StageResult(metrics=metrics, outputs={"model": out_dir})


def student_layers(cfg: DistillConfig, depth: int, budget: AccuracyBudget | None) -> list[list[int]]:
    """The students to try in turn: `cfg.layers`, then (with a budget) each of `cfg.deeper_layers` the
    teacher's `depth` can give."""
    if budget is None:
        return [cfg.layers]
    deeper = []
    for layers in cfg.deeper_layers:
        if max(layers) >= depth:
            print(
                f"  distill: deeper_layers {layers} need a teacher of {max(layers) + 1}+ layers, this one has {depth}: not tried"
            )
        else:
            deeper.append(layers)
    return [cfg.layers, *deeper]
