"""The one training loop every training stage uses (teacher fine-tune, distillation, recovery).

It reads top to bottom: AdamW with linear warm-up and decay, length-bucketed batches, an optional
teacher-logit target (knowledge distillation), validation after every epoch, early stopping on validation
accuracy with the best epoch's weights restored at the end. Per-epoch metrics go to the tracker as step
metrics; a tqdm bar shows progress.

Device, precision, gradient accumulation and checkpointing follow `params.distributed`; under a
multi-process launch the loop is data-parallel (components/kit/distributed.py): every process takes its share
of each global batch, the optimizer steps are the same as in one process, and the processes agree on the
validation accuracy that decides early stopping.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from components.config import DistributedConfig, TrainConfig
from components.kit.distributed import DataParallel, cpu_state, same_on_every_rank
from components.kit.losses import kd_loss
from components.kit.modeling import Encoded, accuracy, collate, length_bucketed_batches, model_inputs, predict_logits
from components.kit.tracking import Tracker


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
          tracker: Tracker, seed: int, kd: Distillation | None = None, desc: str = "train",
          dist: DistributedConfig | None = None) -> TrainOutcome:
    torch.manual_seed(seed)
    dp = DataParallel(dist or DistributedConfig())
    home = next(model.parameters()).device  # the model goes back there when training ends
    lengths = [len(x) for x in train_set.input_ids]
    steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = max(1, int(total_steps * cfg.warmup_ratio))
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    features = kd is not None and kd.features is not None
    if features:  # its projections (where widths differ) learn alongside the student
        kd.features.to(dp.device)
        groups.append({"params": list(kd.features.parameters()), "weight_decay": 0.0})
    raw = model
    model, optimizer = dp.prepare(model, torch.optim.AdamW(groups, lr=cfg.lr))
    labels_all = torch.as_tensor(train_set.labels, dtype=torch.long).to(dp.device)
    teacher_all = torch.as_tensor(kd.teacher_logits).to(dp.device) if kd else None

    best_state, best_acc, best_epoch, stale, step = None, -1.0, 0, 0, 0
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        # Every process draws the same global batches (same seed) and takes its own share of each.
        batches = length_bucketed_batches(lengths, cfg.batch_size, shuffle=True, seed=seed * 1000 + epoch)
        running, seen = 0.0, 0
        bar = tqdm(batches, desc=f"{desc} epoch {epoch}/{cfg.epochs}", unit="batch", leave=False, mininterval=2.0,
                   disable=not dp.main)
        for index in bar:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps, warmup, cfg.lr)
            optimizer.zero_grad(set_to_none=True)
            parts = dp.micro_batches(index)
            for i, part in enumerate(parts):
                rows = part if len(part) else index[:1]  # an empty share still joins the all-reduce, at weight 0
                with dp.syncing(model, last=i == len(parts) - 1), dp.accelerator.autocast():
                    batch = dp.to_device(model_inputs(raw, collate(train_set.input_ids, rows, pad_id)))
                    out = model(**batch, output_hidden_states=features, output_attentions=features)
                    index_t = torch.as_tensor(rows, device=dp.device)
                    loss = kd_loss(out.logits, teacher_all[index_t] if kd else None, labels_all[index_t],
                                   kd.alpha if kd else 0.0, kd.temperature if kd else 1.0)
                    if features:
                        loss = loss + kd.features(out, batch)
                    dp.accelerator.backward(loss * dp.weight(len(part), len(index)))
                running += loss.item() * len(part)
                seen += len(part)
            if features:
                dp.average_gradients(kd.features.parameters())
            dp.accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            bar.set_postfix(loss=f"{running / max(1, seen):.4f}", refresh=False)
        bar.close()
        running, seen = dp.total(running, seen)
        # Every process holds the same weights and scores the whole validation split; rank 0's figure decides,
        # so early stopping and the best epoch cannot differ between processes.
        val_acc = same_on_every_rank(accuracy(predict_logits(raw, val_set, pad_id), val_set.labels))
        record = {"train_loss": running / max(1, seen), "val_accuracy": val_acc,
                  "epoch_seconds": time.perf_counter() - started - sum(h["epoch_seconds"] for h in history)}
        history.append(record)
        tracker.log_metrics(record, step=epoch)
        if dp.main:
            print(f"  {desc} epoch {epoch}: loss {record['train_loss']:.4f}, val acc {val_acc:.4f}, "
                  f"{record['epoch_seconds']:.0f} s", flush=True)
        if val_acc > best_acc:
            best_acc, best_epoch, stale = val_acc, epoch, 0
            best_state = cpu_state(raw)
        else:
            stale += 1
            if stale >= cfg.patience and epoch < cfg.epochs:
                if dp.main:
                    print(f"  {desc}: early stop, best epoch {best_epoch} (val acc {best_acc:.4f})", flush=True)
                break
    raw = dp.finish(model, home)
    raw.load_state_dict(best_state)
    raw.eval()
    if features:
        kd.features.to(home)
    return TrainOutcome(best_epoch, best_acc, len(history), time.perf_counter() - started, history)
