"""Stage 4, distill: a shallower student initialised from a subset of the teacher's layers.

The student is a copy of the fine-tuned teacher that keeps only `distill.layers` (embeddings, pooler and
classifier come along), trained on alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * CE against
the teacher logits the finetune stage stored once (`train_logits.npy`): the teacher never runs here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from components.config import DistillConfig
from components.finetune import load_encoded_splits, read_labels, save_model
from components.modeling import (ModelSourceError, accuracy, count_params, predict_logits, seed_everything,
                                 set_transformer_layers, transformer_layers)
from components.tracking import StageResult, Tracker
from components.training import Distillation, train


def keep_layers(model: nn.Module, layers: list[int]) -> nn.Module:
    """Keep only the given transformer blocks, in order, and record the new depth in the config."""
    blocks = transformer_layers(model)
    if max(layers) >= len(blocks):
        raise ModelSourceError(f"distill.layers {layers} asks for layer {max(layers)}, "
                               f"but the teacher has {len(blocks)} layers (0..{len(blocks) - 1})")
    set_transformer_layers(model, nn.ModuleList(blocks[i] for i in layers))
    for attr in ("num_hidden_layers", "n_layers", "n_layer"):
        if hasattr(model.config, attr):
            setattr(model.config, attr, len(layers))
    return model


def load_teacher_logits(teacher_dir: Path, n_train: int) -> np.ndarray:
    logits = np.load(teacher_dir / "train_logits.npy")
    if logits.shape[0] != n_train:
        raise ValueError(f"{teacher_dir}/train_logits.npy has {logits.shape[0]} rows, train split has {n_train}: "
                         "re-run the finetune stage")
    return logits


def run(cfg: DistillConfig, teacher_dir: Path, prepared: Path, out_dir: Path, tracker: Tracker, seed: int) -> StageResult:
    seed_everything(seed)
    labels = read_labels(prepared)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    student = keep_layers(AutoModelForSequenceClassification.from_pretrained(teacher_dir), cfg.layers)
    data = load_encoded_splits(prepared, tokenizer, labels, cfg.max_length)
    kd = Distillation(load_teacher_logits(teacher_dir, len(data["train"])), cfg.alpha, cfg.temperature)
    tracker.log_params(cfg.model_dump() | {"params": count_params(student)})

    outcome = train(student, data["train"], data["validation"], cfg, tokenizer.pad_token_id, tracker, seed,
                    kd=kd, desc="distill")

    test_acc = accuracy(predict_logits(student, data["test"], tokenizer.pad_token_id), data["test"].labels)
    metrics = {"val_accuracy": outcome.best_val_accuracy, "test_accuracy": test_acc,
               "best_epoch": outcome.best_epoch, "epochs_run": outcome.epochs_run,
               "train_seconds": outcome.seconds, "params": count_params(student)}
    save_model(student, tokenizer, labels, out_dir, metrics)
    tracker.log_metrics({"test_accuracy": test_acc, "best_val_accuracy": outcome.best_val_accuracy})
    return StageResult(metrics=metrics, outputs={"model": out_dir})
