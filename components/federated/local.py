"""A client's side of a round, without Flower: load the student, put the received weights in, fine-tune it on
the client's shard for E epochs (with distillation from a local teacher when there is one, and FedProx's
proximal term when asked), and hand back the update; measure a model on a split. The Flower ClientApp
(`components.federated.client_app`) is a thin wrapper around `client_round` and `client_evaluate`.

What travels is `trainable_names(model)`: every parameter but the word-embedding table. The table is most of
a small student's parameters, its vocabulary is trimmed to the data the model was built on, and it stays as
each client has it (the training loop keeps it fixed: `freeze_word_embeddings`).

The training loop is the pipeline's (`components.kit.training.train`): AdamW, length-bucketed batches, the
best local epoch on the client's validation split kept; the loss is `kd_loss`, plus the proximal term.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from components.config import TrainConfig
from components.federated.updates import Arrays, difference, payload_bytes, to_wire
from components.kit.losses import kd_loss
from components.kit.modeling import Encoded, accuracy, encode, predict_logits, save_model
from components.kit.tracking import NullTracker
from components.kit.training import Distillation, Objective, train


@dataclass(frozen=True)
class LocalSettings:
    """A client's round, as the server's round config says (`FederatedConfig.local_settings`)."""

    local_epochs: int = 1
    lr: float = 1e-4
    batch_size: int = 32
    max_length: int = 64
    distill: bool = True
    alpha: float = 0.5
    temperature: float = 2.0
    proximal_mu: float = 0.0

    @classmethod
    def from_config(cls, config: dict) -> LocalSettings:
        """From a round's config record (keys with dashes, `proximal-mu` added by FedProx)."""
        fields = {name.replace("_", "-"): name for name in cls.__dataclass_fields__}
        return cls(**{fields[k]: type(getattr(cls, fields[k]))(v) for k, v in config.items() if k in fields})

    def train_config(self) -> TrainConfig:
        # patience = epochs: no early stop inside a round; the best local epoch on validation is still kept
        return TrainConfig(
            epochs=self.local_epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            patience=self.local_epochs,
            max_length=self.max_length,
            freeze_word_embeddings=True,
        )


# ---------------------------------------------------------------- the student and its trainable weights


def load_student(student_dir: Path):
    """(model, tokenizer, labels) of a classifier folder (labels.json beside the weights)."""
    labels = json.loads((Path(student_dir) / "labels.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    model = AutoModelForSequenceClassification.from_pretrained(student_dir, use_safetensors=True)
    return model, tokenizer, labels


def trainable_names(model: torch.nn.Module) -> list[str]:
    """The parameters that train and travel: all but the word-embedding table."""
    table = model.get_input_embeddings().weight
    return [name for name, param in model.named_parameters() if param is not table]


def get_arrays(model: torch.nn.Module, names: list[str] | None = None) -> Arrays:
    """The named parameters as fp32 numpy copies (default: `trainable_names`)."""
    wanted = set(names if names is not None else trainable_names(model))
    return {n: p.detach().cpu().float().numpy().copy() for n, p in model.named_parameters() if n in wanted}


def set_arrays(model: torch.nn.Module, arrays: Arrays) -> None:
    """Load the arrays into the parameters of the same names (any float dtype; cast to the parameter's)."""
    params = dict(model.named_parameters())
    unknown = set(arrays) - set(params)
    if unknown:
        raise KeyError(f"the model has no parameters named {sorted(unknown)[:3]}")
    with torch.no_grad():
        for name, value in arrays.items():
            params[name].copy_(torch.from_numpy(np.asarray(value)).to(params[name].dtype))


def write_student(student_dir: Path, arrays: Arrays, out_dir: Path, extra: dict) -> Path:
    """The student of `student_dir` with `arrays` in place of its trainable weights, saved as a classifier
    folder (what the export stage reads)."""
    model, tokenizer, labels = load_student(student_dir)
    set_arrays(model, arrays)
    save_model(model, tokenizer, labels, out_dir, extra)
    return out_dir


# ---------------------------------------------------------------- a shard


def read_split(shard: Path, split: str) -> pd.DataFrame:
    return pd.read_parquet(Path(shard) / f"{split}.parquet")[["text", "label"]]


def encode_rows(tokenizer, rows: pd.DataFrame, labels: list[str], max_length: int) -> Encoded:
    return encode(tokenizer, rows["text"].tolist(), rows["label"].tolist(), labels, max_length)


def teacher_logits(teacher_dir: Path, rows: pd.DataFrame, labels: list[str], max_length: int, cache: Path | None):
    """The teacher's logits on `rows` through its own tokenizer, cached in `cache` (a folder) under a hash of the
    teacher's weights, the texts and the length: a client computes them once, not every round."""
    teacher_dir = Path(teacher_dir)
    digest = hashlib.sha256()
    for weights in sorted(teacher_dir.glob("*.safetensors")):
        digest.update(
            weights.name.encode() + str(weights.stat().st_size).encode() + str(weights.stat().st_mtime_ns).encode()
        )
    digest.update("\n".join(rows["text"]).encode() + str(max_length).encode())
    cached = Path(cache) / f"teacher_logits-{digest.hexdigest()[:16]}.npy" if cache else None
    if cached is not None and cached.is_file():
        return np.load(cached)
    model, tokenizer, teacher_labels = load_student(teacher_dir)
    if teacher_labels != labels:
        raise ValueError(f"the teacher's labels {teacher_labels} differ from the student's {labels}")
    logits = predict_logits(model, encode_rows(tokenizer, rows, labels, max_length), tokenizer.pad_token_id)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.save(cached, logits)
    return logits


def measure(model, data: Encoded, pad_id: int) -> dict[str, float]:
    """Accuracy and mean cross-entropy (nats) of the model on an encoded split."""
    logits = predict_logits(model, data, pad_id)
    if not len(data):
        return {"accuracy": 0.0, "loss": 0.0}
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    loss = float(-log_probs[np.arange(len(data)), data.labels].mean())
    return {"accuracy": accuracy(logits, data.labels), "loss": loss}


# ---------------------------------------------------------------- the proximal term (FedProx)


def proximal_objective(model: torch.nn.Module, start: Arrays, mu: float) -> Objective:
    """`kd_loss` plus (mu / 2) x ||w - w_start||^2 over the travelling weights: FedProx's client objective
    (Li et al. 2020). With mu 0 it is the plain objective."""
    if mu <= 0:
        return Objective()
    params = dict(model.named_parameters())
    anchors = {name: torch.from_numpy(np.asarray(value, np.float32)) for name, value in start.items()}

    def loss(student_logits, teacher, labels, alpha, temperature):
        drift = sum(torch.sum((params[n] - a.to(params[n].device)) ** 2) for n, a in anchors.items())
        return kd_loss(student_logits, teacher, labels, alpha, temperature) + 0.5 * mu * drift

    return Objective(loss=loss)


# ---------------------------------------------------------------- a client's round


def client_round(
    student_dir: Path,
    shard: Path,
    received: Arrays,
    settings: LocalSettings,
    wire_dtype: str,
    seed: int,
    teacher_dir: Path | None = None,
    cache: Path | None = None,
) -> tuple[Arrays, dict[str, float]]:
    """Fine-tune the student, holding the received global weights, on the shard's train split; returns (its
    update in the wire dtype, the round's figures: the received model's accuracy and loss on the shard's test
    split before training, the best local validation accuracy, the training loss, rows, bytes, seconds)."""
    started = time.perf_counter()
    model, tokenizer, labels = load_student(student_dir)
    set_arrays(model, received)
    start = get_arrays(model, list(received))  # as loaded: what the update is measured from
    pad = tokenizer.pad_token_id
    train_rows, val_rows = read_split(shard, "train"), read_split(shard, "validation")
    train_set = encode_rows(tokenizer, train_rows, labels, settings.max_length)
    val_set = encode_rows(tokenizer, val_rows, labels, settings.max_length)
    test_set = encode_rows(tokenizer, read_split(shard, "test"), labels, settings.max_length)
    before = measure(model, test_set, pad)
    kd = None
    if settings.distill and teacher_dir is not None:
        soft = teacher_logits(teacher_dir, train_rows, labels, settings.max_length, cache)
        kd = Distillation(soft, settings.alpha, settings.temperature)
    objective = proximal_objective(model, start, settings.proximal_mu)
    outcome = train(
        model, train_set, val_set, settings.train_config(), pad, NullTracker(), seed, kd=kd, objective=objective
    )
    update = to_wire(difference(get_arrays(model, list(received)), start), wire_dtype)
    figures = {
        "num-examples": len(train_set),
        "received_test_accuracy": before["accuracy"],
        "received_test_loss": before["loss"],
        "val_accuracy": outcome.best_val_accuracy,
        "train_loss": outcome.history[-1]["train_loss"] if outcome.history else float("nan"),
        "distilled": float(kd is not None),
        "bytes_down": payload_bytes(received),
        "bytes_up": payload_bytes(update),
        "seconds": time.perf_counter() - started,
    }
    return update, figures


def client_evaluate(student_dir: Path, shard: Path, received: Arrays, max_length: int, split: str = "test"):
    """The received global weights measured on the shard's split: accuracy, loss, rows."""
    model, tokenizer, labels = load_student(student_dir)
    set_arrays(model, received)
    data = encode_rows(tokenizer, read_split(shard, split), labels, max_length)
    return measure(model, data, tokenizer.pad_token_id) | {"num-examples": len(data)}


def evaluate_folder(model_dir: Path, shard: Path, max_length: int, split: str = "test") -> dict[str, float]:
    """A classifier folder (PyTorch) measured on a shard's split: accuracy, loss, rows."""
    model, tokenizer, labels = load_student(model_dir)
    data = encode_rows(tokenizer, read_split(shard, split), labels, max_length)
    return measure(model, data, tokenizer.pad_token_id) | {"num-examples": len(data)}


def finetune_central(
    student_dir: Path,
    shards: list[Path],
    settings: LocalSettings,
    epochs: int,
    seed: int,
    out_dir: Path,
    teacher_dir: Path | None = None,
) -> dict:
    """The baseline a federation is judged against: the same student fine-tuned on the union of the shards'
    train splits (validation: the union of theirs) for `epochs` epochs, the same local settings and travelling
    weights; saved to `out_dir`."""
    model, tokenizer, labels = load_student(student_dir)
    train_rows = pd.concat([read_split(s, "train") for s in shards], ignore_index=True)
    val_rows = pd.concat([read_split(s, "validation") for s in shards], ignore_index=True)
    train_set = encode_rows(tokenizer, train_rows, labels, settings.max_length)
    val_set = encode_rows(tokenizer, val_rows, labels, settings.max_length)
    kd = None
    if settings.distill and teacher_dir is not None:
        soft = teacher_logits(teacher_dir, train_rows, labels, settings.max_length, None)
        kd = Distillation(soft, settings.alpha, settings.temperature)
    cfg = settings.train_config().model_copy(update={"epochs": epochs, "patience": epochs})
    outcome = train(model, train_set, val_set, cfg, tokenizer.pad_token_id, NullTracker(), seed, kd=kd)
    metrics = {"val_accuracy": outcome.best_val_accuracy, "epochs_run": outcome.epochs_run, "seconds": outcome.seconds}
    save_model(model, tokenizer, labels, out_dir, metrics)
    return metrics
