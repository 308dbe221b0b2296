"""Stage, finetune: fine-tune the teacher for the task, with early stopping on validation accuracy.

Loads `teacher.model` (local path, packaged copy, or hub id) with a fresh classification head sized to
the label set in the data card (or one block of logits per task for multitask data, `components.kit.heads`), trains it with `components.kit.training.train`, and saves the best epoch to
`out_dir` (safetensors, tokenizer, `labels.json`). It also stores the teacher's logits on the train split,
and on the unlabelled transfer set when the data has one, under `out_dir/soft_targets/<key>/`
(`components.kit.soft_targets`), so that distillation, pruning recovery and the search never run the teacher
again. Under a multi-process launch every process trains its share and only rank 0 writes files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from components.config import DistributedConfig, TeacherConfig
from components.kit import soft_targets
from components.kit.distributed import is_main_process
from components.kit.labelling import labelling_of
from components.kit.modeling import (
    count_params,
    load_encoded_splits,
    load_transfer,
    predict_logits,
    save_model,
    seed_everything,
)
from components.kit.sources import resolve_model_source
from components.kit.tracking import StageResult, Tracker
from components.kit.training import TaskMix, train


def run(
    cfg: TeacherConfig,
    prepared: Path,
    out_dir: Path,
    tracker: Tracker,
    seed: int,
    dist: DistributedConfig | None = None,
    mix: TaskMix | None = None,
) -> StageResult:
    """`mix`: how the tasks of multitask data share training (each task's loss weight, balanced drawing)."""
    seed_everything(seed)
    labels = labelling_of(prepared)
    source = resolve_model_source(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(source)
    config = labels.configure(AutoConfig.from_pretrained(source))
    # A source that is already a classifier with another label set gets a fresh head of the right size.
    model = AutoModelForSequenceClassification.from_pretrained(
        source, config=config, use_safetensors=True, ignore_mismatched_sizes=True
    )
    data = load_encoded_splits(prepared, tokenizer, labels, cfg.max_length)
    tracker.log_params(cfg.model_dump() | {"resolved_source": source, "params": count_params(model)})

    outcome = train(
        model,
        data["train"],
        data["validation"],
        cfg,
        tokenizer.pad_token_id,
        tracker,
        seed,
        desc="teacher",
        dist=dist,
        objective=labels.objective(mix),
    )

    test = labels.scores(predict_logits(model, data["test"], tokenizer.pad_token_id), data["test"].labels)
    metrics = {
        "val_accuracy": outcome.best_val_accuracy,
        **{f"test_{key}": value for key, value in test.items()},
        "best_epoch": outcome.best_epoch,
        "epochs_run": outcome.epochs_run,
        "train_seconds": outcome.seconds,
        "examples": outcome.examples,  # training rows processed over every epoch run
        "params": count_params(model),
    }
    if is_main_process():  # a new teacher: the soft targets of an earlier one can never be read again
        shutil.rmtree(out_dir / soft_targets.FOLDER, ignore_errors=True)
    save_model(model, tokenizer, labels.names, out_dir, metrics)
    splits = {"train": data["train"], "transfer": load_transfer(prepared, tokenizer, labels, cfg.max_length)}
    for split, encoded in splits.items():
        if encoded is not None:
            soft_targets.save_for(
                model, out_dir, prepared, split, encoded, tokenizer.pad_token_id, cfg.max_length, dist
            )
    tracker.log_metrics(
        {f"test_{key}": value for key, value in test.items()} | {"best_val_accuracy": outcome.best_val_accuracy}
    )
    return StageResult(metrics=metrics, outputs={"model": out_dir})
