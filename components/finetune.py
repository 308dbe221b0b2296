"""Stage 3, finetune: fine-tune the teacher for the task, with early stopping on validation accuracy.

Loads `teacher.model` (local path, packaged copy, or hub id) with a fresh classification head sized to
the label set in the data card, trains it with `components.training.train`, and saves the best epoch to
`out_dir` (safetensors, tokenizer, `labels.json`). It also stores the teacher's logits on the train split,
and on the unlabelled transfer set when the data has one, under `out_dir/soft_targets/<key>/`
(`components.soft_targets`), so that distillation, pruning recovery and the search never run the teacher
again. Under a multi-process launch every process trains its share and only rank 0 writes files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from transformers import AutoModelForSequenceClassification, AutoTokenizer

from components import soft_targets
from components.config import DistributedConfig, TeacherConfig
from components.distributed import is_main_process, wait_for_everyone
from components.modeling import (
    accuracy,
    count_params,
    encode,
    predict_logits,
    read_split,
    resolve_model_source,
    seed_everything,
)
from components.tracking import StageResult, Tracker
from components.training import train


def read_labels(prepared: Path) -> list[str]:
    return json.loads((prepared / "data_card.json").read_text())["labels"]


def load_encoded_splits(prepared: Path, tokenizer, labels: list[str], max_length: int, names=("train", "validation", "test")):
    out = {}
    for name in names:
        frame = read_split(prepared, name)
        out[name] = encode(tokenizer, frame["text"].tolist(), frame["label"].tolist(), labels, max_length)
    return out


def load_transfer(prepared: Path, tokenizer, labels: list[str], max_length: int):
    """The unlabelled transfer set as an Encoded split (labels UNLABELLED), or None when there is none."""
    path = prepared / "transfer.parquet"
    if not path.exists():
        return None
    return encode(tokenizer, read_split(prepared, "transfer")["text"].tolist(), None, labels, max_length)


def save_model(model, tokenizer, labels: list[str], out_dir: Path, extra: dict) -> None:
    """Rank 0 writes the model folder (every process holds the same weights); all processes wait for it."""
    if is_main_process():
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
        (out_dir / "labels.json").write_text(json.dumps(labels))
        (out_dir / "metrics.json").write_text(json.dumps(extra, indent=2))
    wait_for_everyone()


def run(cfg: TeacherConfig, prepared: Path, out_dir: Path, tracker: Tracker, seed: int,
        dist: DistributedConfig | None = None) -> StageResult:
    seed_everything(seed)
    labels = read_labels(prepared)
    source = resolve_model_source(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(
        source, use_safetensors=True, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)})
    data = load_encoded_splits(prepared, tokenizer, labels, cfg.max_length)
    tracker.log_params(cfg.model_dump() | {"resolved_source": source, "params": count_params(model)})

    outcome = train(model, data["train"], data["validation"], cfg, tokenizer.pad_token_id, tracker, seed,
                    desc="teacher", dist=dist)

    test_acc = accuracy(predict_logits(model, data["test"], tokenizer.pad_token_id), data["test"].labels)
    metrics = {"val_accuracy": outcome.best_val_accuracy, "test_accuracy": test_acc,
               "best_epoch": outcome.best_epoch, "epochs_run": outcome.epochs_run,
               "train_seconds": outcome.seconds, "params": count_params(model)}
    if is_main_process():  # a new teacher: the soft targets of an earlier one can never be read again
        shutil.rmtree(out_dir / soft_targets.FOLDER, ignore_errors=True)
    save_model(model, tokenizer, labels, out_dir, metrics)
    splits = {"train": data["train"], "transfer": load_transfer(prepared, tokenizer, labels, cfg.max_length)}
    for split, encoded in splits.items():
        if encoded is not None:
            soft_targets.save_for(model, out_dir, prepared, split, encoded, tokenizer.pad_token_id, cfg.max_length,
                                  dist)
    tracker.log_metrics({"test_accuracy": test_acc, "best_val_accuracy": outcome.best_val_accuracy})
    return StageResult(metrics=metrics, outputs={"model": out_dir})
