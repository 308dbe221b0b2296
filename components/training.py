"""The one training loop every training stage uses (teacher fine-tune, distillation, recovery).

It reads top to bottom: AdamW with linear warm-up and decay, length-bucketed batches, an optional
teacher-logit target (knowledge distillation), validation after every epoch, early stopping on validation
accuracy with the best epoch's weights restored at the end. Per-epoch metrics go to the tracker as step
metrics; a tqdm bar shows progress.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from components.config import TrainConfig
from components.losses import kd_loss
from components.modeling import Encoded, accuracy, collate, length_bucketed_batches, model_inputs, predict_logits
from components.tracking import Tracker


@dataclass
class Distillation:
    teacher_logits: np.ndarray  # (n_train, n_labels), computed once by the teacher stage
    alpha: float
    temperature: float
    # Intermediate-layer transfer (hidden states, attention maps): needs the teacher itself at train time.
    features: nn.Module | None = None


@dataclass
class TrainOutcome:
    best_epoch: int
    best_val_accuracy: float
    epochs_run: int
    seconds: float
    history: list[dict[str, float]]


def lr_at(step: int, total: int, warmup: int, base_lr: float) -> float:
    """Linear warm-up to base_lr, then linear decay to zero."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    return base_lr * max(0.0, (total - step) / max(1, total - warmup))


def train(model: nn.Module, train_set: Encoded, val_set: Encoded, cfg: TrainConfig, pad_id: int,
          tracker: Tracker, seed: int, kd: Distillation | None = None, desc: str = "train") -> TrainOutcome:
    torch.manual_seed(seed)
    lengths = [len(x) for x in train_set.input_ids]
    steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = max(1, int(total_steps * cfg.warmup_ratio))
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    if kd and kd.features is not None:  # its projections (where widths differ) learn alongside the student
        groups.append({"params": list(kd.features.parameters()), "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    labels_all = torch.as_tensor(train_set.labels, dtype=torch.long)
    teacher_all = torch.as_tensor(kd.teacher_logits) if kd else None

    best_state, best_acc, best_epoch, stale, step = None, -1.0, 0, 0, 0
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        batches = length_bucketed_batches(lengths, cfg.batch_size, shuffle=True, seed=seed * 1000 + epoch)
        running, seen = 0.0, 0
        bar = tqdm(batches, desc=f"{desc} epoch {epoch}/{cfg.epochs}", unit="batch", leave=False, mininterval=2.0)
        for index in bar:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps, warmup, cfg.lr)
            batch = model_inputs(model, collate(train_set.input_ids, index, pad_id))
            features = kd is not None and kd.features is not None
            out = model(**batch, output_hidden_states=features, output_attentions=features)
            index_t = torch.as_tensor(index)
            loss = kd_loss(out.logits, teacher_all[index_t] if kd else None, labels_all[index_t],
                           kd.alpha if kd else 0.0, kd.temperature if kd else 1.0)
            if features:
                loss = loss + kd.features(out, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            running += loss.item() * len(index)
            seen += len(index)
            bar.set_postfix(loss=f"{running / seen:.4f}", refresh=False)
        bar.close()
        val_acc = accuracy(predict_logits(model, val_set, pad_id), val_set.labels)
        record = {"train_loss": running / max(1, seen), "val_accuracy": val_acc,
                  "epoch_seconds": time.perf_counter() - started - sum(h["epoch_seconds"] for h in history)}
        history.append(record)
        tracker.log_metrics(record, step=epoch)
        print(f"  {desc} epoch {epoch}: loss {record['train_loss']:.4f}, val acc {val_acc:.4f}, "
              f"{record['epoch_seconds']:.0f} s", flush=True)
        if val_acc > best_acc:
            best_acc, best_epoch, stale = val_acc, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= cfg.patience and epoch < cfg.epochs:
                print(f"  {desc}: early stop, best epoch {best_epoch} (val acc {best_acc:.4f})", flush=True)
                break
    model.load_state_dict(best_state)
    model.eval()
    return TrainOutcome(best_epoch, best_acc, len(history), time.perf_counter() - started, history)
