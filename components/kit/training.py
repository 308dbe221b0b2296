"""The classifier training loop every classification training stage uses (teacher fine-tune, distillation,
recovery), and the parts of it the causal-LM loop (`components.causal_lm.train.fit`) shares: the learning-rate
schedule (`Schedule`), one epoch of optimizer steps (`train_epoch`) and the best-epoch bookkeeping (`BestEpoch`).

`train` reads top to bottom: AdamW with linear warm-up and decay, length-bucketed batches, an optional
teacher-logit target (knowledge distillation), validation after every epoch, early stopping on validation
accuracy (a tie broken by the lower validation loss) with the best epoch's weights restored at the end.
Per-epoch metrics go to the tracker as step metrics; each epoch's progress shows as a bar on a terminal and as
plain lines elsewhere (a log file, the Prefect UI: `components.kit.progress`).

Device, precision, gradient accumulation and checkpointing follow `params.distributed`; under a
multi-process launch the loop is data-parallel (components/kit/distributed.py): every process takes its share
of each global batch, the optimizer steps are the same as in one process, and the processes agree on the
validation accuracy that decides early stopping.
"""

from __future__ import annotations

import math
import operator
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from components.config import DistributedConfig, TrainConfig
from components.kit.distributed import DataParallel, cpu_state, same_on_every_rank
from components.kit.losses import kd_loss
from components.kit.modeling import Encoded, accuracy, collate, length_bucketed_batches, model_inputs, predict_logits
from components.kit.progress import progress
from components.kit.tracking import Tracker


@dataclass
class Distillation:
    teacher_logits: np.ndarray  # (n_train, n_labels), computed once by the teacher stage
    alpha: float
    temperature: float
    # Intermediate-layer transfer (hidden states, attention maps): needs the teacher itself at train time.
    features: nn.Module | None = None
    # One soft-term weight per training row instead of `alpha` (an incremental update: 0 on new rows).
    row_alpha: np.ndarray | None = None


@dataclass(frozen=True)
class Objective:
    """What a run minimises and early-stops on. The default: one label per row, `kd_loss` and accuracy. A
    multitask model has one label per task and row (`components.kit.heads.Heads.objective`)."""

    # (student logits, teacher logits or None, labels, alpha (a float or one per row), temperature) -> loss
    loss: Callable[..., torch.Tensor] = kd_loss
    score: Callable[[np.ndarray, np.ndarray], float] = accuracy  # (logits, labels): higher is better
    # (training labels) -> the probability of drawing each row, or None: every row once per epoch
    sampling: Callable[[np.ndarray], np.ndarray | None] | None = None
    # rows an epoch draws when `sampling` gives probabilities; None: as many as there are training rows
    draws: int | None = None


@dataclass(frozen=True)
class TaskMix:
    """How the tasks of a multitask model share its training (`multitask.weights`,
    `multitask.balanced_sampling`): each task's loss weight (1 when absent), and whether each epoch draws its
    rows so that every task's labelled rows are drawn equally often (`components.kit.heads`)."""

    weights: dict[str, float] = field(default_factory=dict)
    balanced: bool = False


SINGLE_LABEL = Objective()


def validation_loss(objective: Objective, logits: np.ndarray, labels: np.ndarray) -> float:
    """The objective's loss on the labels alone (no teacher), what breaks a tie in validation accuracy; NaN
    (which breaks no tie) for a split without a labelled row."""
    if len(labels) == 0:
        return math.nan
    with torch.no_grad():
        loss = objective.loss(torch.as_tensor(logits).float(), None, torch.as_tensor(labels), 0.0, 1.0)
    value = float(loss)
    return value if math.isfinite(value) else math.nan


@dataclass
class TrainOutcome:
    best_epoch: int
    best_val_accuracy: float
    epochs_run: int
    seconds: float
    history: list[dict[str, float]]
    examples: int = 0  # training rows processed, over all epochs run: the cost an update is compared by


def use_threads(threads: int | None) -> None:
    """torch's intra-op threads in this process for what it trains next (the `threads` param); None keeps
    torch's own default, one per core."""
    if threads is not None:
        torch.set_num_threads(threads)


def lr_at(step: int, total: int, warmup: int, base_lr: float) -> float:
    """Linear warm-up to base_lr, then linear decay to zero."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    return base_lr * max(0.0, (total - step) / max(1, total - warmup))


@dataclass
class Schedule:
    """Linear warm-up to `lr` over `warmup` optimizer steps, then linear decay to zero at `total` (`lr_at`);
    `step` counts the steps taken."""

    lr: float
    total: int
    warmup: int
    step: int = 0

    @classmethod
    def linear(cls, lr: float, total: int, warmup_share: float) -> Schedule:
        return cls(lr, total, max(1, int(total * warmup_share)))

    def next_lr(self) -> float:
        """The learning rate of the next step."""
        lr = lr_at(self.step, self.total, self.warmup, self.lr)
        self.step += 1
        return lr


@dataclass
class BestEpoch:
    """Best-epoch bookkeeping: the best validation figure so far (`better(new, best)` says which is better),
    its epoch, the weights then (on the CPU) and the epochs since. An epoch that equals the best figure but has
    a lower `tiebreak` (the validation loss) counts as better: on a validation split of a few hundred rows the
    accuracy moves in coarse steps, and a tie there must not stop a model that is still learning."""

    value: float
    better: Callable[[float, float], bool]
    epoch: int = 0
    state: dict | None = None
    stale: int = 0
    tiebreak: float = math.inf

    def update(self, value: float, epoch: int, model: nn.Module, tiebreak: float = math.inf) -> None:
        if self.better(value, self.value) or (value == self.value and tiebreak < self.tiebreak):
            self.value, self.epoch, self.stale, self.tiebreak = value, epoch, 0, tiebreak
            self.state = cpu_state(model)
        else:
            self.stale += 1


def train_epoch(
    dp: DataParallel,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: list[np.ndarray],
    schedule: Schedule,
    part_loss: Callable[[np.ndarray], torch.Tensor],
    part_weight: Callable[[np.ndarray, np.ndarray], float],
    desc: str,
    loss_digits: int = 4,
    before_clip: Callable[[], None] | None = None,
) -> float:
    """One epoch: an optimizer step per global batch of `batches` (row indices), at the schedule's rate. This
    process takes its share of each batch in micro-batches (`dp.micro_batches`); a micro-batch's loss
    `part_loss(rows)` is back-propagated at weight `part_weight(part, batch)` of the whole batch. Gradients are
    clipped to norm 1.0 (after `before_clip`). Returns the mean training loss over all processes' rows."""
    model.train()
    running, seen = 0.0, 0
    bar = progress(batches, desc, unit="batch", disable=not dp.main)
    for index in bar:
        lr = schedule.next_lr()
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        parts = dp.micro_batches(index)
        for i, part in enumerate(parts):
            rows = part if len(part) else index[:1]  # an empty share still joins the all-reduce, at weight 0
            with dp.syncing(model, last=i == len(parts) - 1), dp.accelerator.autocast():
                loss = part_loss(rows)
                dp.accelerator.backward(loss * part_weight(part, index))
            running += loss.item() * len(part)
            seen += len(part)
        if before_clip is not None:
            before_clip()
        dp.accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        bar.set_postfix(loss=f"{running / max(1, seen):.{loss_digits}f}", refresh=False)
    bar.close()
    running, seen = dp.total(running, seen)
    return running / max(1, seen)


def report_epoch(
    history: list[dict], record: dict[str, float], epoch: int, tracker: Tracker, dp: DataParallel, summary: str
) -> None:
    """Keep the epoch's record, log it as step metrics, and print `summary` with the epoch's seconds (on the
    main process only)."""
    history.append(record)
    tracker.log_metrics(record, step=epoch)
    if dp.main:
        print(f"  {summary}, {record['epoch_seconds']:.0f} s", flush=True)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups of the trainable parameters: weight decay on the weights, none on biases and
    layer norms."""
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if not n.endswith(no_decay)], "weight_decay": weight_decay},
        {"params": [p for n, p in named if n.endswith(no_decay)], "weight_decay": 0.0},
    ]


def adamw(groups: list[dict], lr: float) -> torch.optim.AdamW:
    """AdamW with the fused kernel: one pass over the parameters per step instead of several. On the default
    3-layer student on 2 CPU cores it cut a training step from 289 to 247 ms (`docs/measured.md`)."""
    return torch.optim.AdamW(groups, lr=lr, fused=True)


@contextmanager
def word_embeddings_frozen(model: nn.Module, frozen: bool):
    """Keep the word-embedding table fixed while training when `frozen`. It holds most of a small student's
    parameters, and its dense gradient and optimizer step were a third of a step's time on 2 CPU cores; the
    rows a task's text never uses would not move anyway (and vocabulary trimming drops them)."""
    table = model.get_input_embeddings().weight
    before = table.requires_grad
    table.requires_grad_(before and not frozen)
    try:
        yield
    finally:
        table.requires_grad_(before)


def classifier_loss(
    model: nn.Module,
    raw: nn.Module,
    train_set: Encoded,
    pad_id: int,
    kd: Distillation | None,
    dp: DataParallel,
    objective: Objective = SINGLE_LABEL,
) -> Callable[[np.ndarray], torch.Tensor]:
    """The loss of a micro-batch of training rows: the objective's loss (`kd_loss`) against the labels and,
    with `kd`, the teacher's logits, plus the feature-transfer term when `kd.features` is set. `model` is the
    prepared (possibly wrapped) model, `raw` the model itself."""
    features = kd is not None and kd.features is not None
    labels_all = torch.as_tensor(train_set.labels, dtype=torch.long).to(dp.device)
    teacher_all = torch.as_tensor(kd.teacher_logits).to(dp.device) if kd else None
    alpha_all = (
        torch.as_tensor(kd.row_alpha, dtype=torch.float32).to(dp.device) if kd and kd.row_alpha is not None else None
    )

    def loss_of(rows: np.ndarray) -> torch.Tensor:
        batch = dp.to_device(model_inputs(raw, collate(train_set.input_ids, rows, pad_id)))
        out = model(**batch, output_hidden_states=features, output_attentions=features)
        index_t = torch.as_tensor(rows, device=dp.device)
        loss = objective.loss(
            out.logits,
            teacher_all[index_t] if kd else None,
            labels_all[index_t],
            alpha_all[index_t] if alpha_all is not None else (kd.alpha if kd else 0.0),
            kd.temperature if kd else 1.0,
        )
        return loss + kd.features(out, batch) if features else loss

    return loss_of


def train(
    model: nn.Module,
    train_set: Encoded,
    val_set: Encoded,
    cfg: TrainConfig,
    pad_id: int,
    tracker: Tracker,
    seed: int,
    kd: Distillation | None = None,
    desc: str = "train",
    dist: DistributedConfig | None = None,
    objective: Objective = SINGLE_LABEL,
) -> TrainOutcome:
    """Train `model` on `train_set` (with `kd`'s teacher targets, when given), keep its best epoch on
    `val_set`, and say what it cost."""
    with word_embeddings_frozen(model, cfg.freeze_word_embeddings):
        torch.manual_seed(seed)
        dp = DataParallel(dist or DistributedConfig())
        home = next(model.parameters()).device  # the model goes back there when training ends
        lengths = [len(x) for x in train_set.input_ids]
        draw = objective.sampling(train_set.labels) if objective.sampling is not None else None
        # the rows an epoch processes: what the schedule and the cost count
        per_epoch = len(train_set) if draw is None or objective.draws is None else objective.draws
        schedule = Schedule.linear(cfg.lr, math.ceil(per_epoch / cfg.batch_size) * cfg.epochs, cfg.warmup_ratio)
        groups = parameter_groups(model, cfg.weight_decay)
        features = kd is not None and kd.features is not None
        if features:  # its projections (where widths differ) learn alongside the student
            kd.features.to(dp.device)
            groups.append({"params": list(kd.features.parameters()), "weight_decay": 0.0})
        raw = model
        model, optimizer = dp.prepare(model, adamw(groups, cfg.lr))
        part_loss = classifier_loss(model, raw, train_set, pad_id, kd, dp, objective)
        before_clip = (lambda: dp.average_gradients(kd.features.parameters())) if features else None

        best = BestEpoch(-1.0, operator.gt)
        history: list[dict[str, float]] = []
        started = time.perf_counter()
        for epoch in range(1, cfg.epochs + 1):
            # Every process draws the same global batches (same seed) and takes its own share of each.
            batches = length_bucketed_batches(
                lengths, cfg.batch_size, shuffle=True, seed=seed * 1000 + epoch, draw=draw, draws=per_epoch
            )
            train_loss = train_epoch(
                dp,
                model,
                optimizer,
                batches,
                schedule,
                part_loss,
                lambda part, index: dp.weight(len(part), len(index)),
                f"{desc} epoch {epoch}/{cfg.epochs}",
                4,
                before_clip,
            )
            # Every process holds the same weights and scores the whole validation split; rank 0's figure decides,
            # so early stopping and the best epoch cannot differ between processes.
            val_logits = predict_logits(raw, val_set, pad_id)
            val_acc = same_on_every_rank(objective.score(val_logits, val_set.labels))
            val_loss = same_on_every_rank(validation_loss(objective, val_logits, val_set.labels))
            record = {
                "train_loss": train_loss,
                "val_accuracy": val_acc,
                "val_loss": val_loss,
                "epoch_seconds": time.perf_counter() - started - sum(h["epoch_seconds"] for h in history),
            }
            report_epoch(
                history,
                record,
                epoch,
                tracker,
                dp,
                f"{desc} epoch {epoch}: loss {train_loss:.4f}, val acc {val_acc:.4f}",
            )
            best.update(val_acc, epoch, raw, tiebreak=val_loss)
            if best.stale >= cfg.patience and epoch < cfg.epochs:
                if dp.main:
                    print(f"  {desc}: early stop, best epoch {best.epoch} (val acc {best.value:.4f})", flush=True)
                break
        raw = dp.finish(model, home)
        raw.load_state_dict(best.state)
        raw.eval()
        if features:
            kd.features.to(home)
        return TrainOutcome(
            best.epoch, best.value, len(history), time.perf_counter() - started, history, per_epoch * len(history)
        )
