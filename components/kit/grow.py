"""Grow a compressed student by one of its teacher's layers, keeping everything it has learned
(`components.classification.update` calls it). Library code: nothing to run.

A student the distill stage made keeps a subset of the teacher's layers (`distill.layers`; a full run's warm start records them as
`teacher_layers` in its config.json); pruning narrowed its attention (heads) and FFN (neurons). When an update
finds that student over the full run's accuracy budget on the batches it already knows, it cannot hold what
the teacher has learned, and the full run's answer is a deeper student (`distill.deeper_layers`). Growing
gives the update that answer without retraining from scratch: the student's blocks stay as they are, and
the teacher's next layer is inserted at its place in the teacher's order. `next_layers` says which one:
the first layer of the first deeper set longer than the student that the student lacks. The inserted block
keeps every attention head and is narrowed to the student's FFN width (one `intermediate_size` in the config)
by the prune stage's importance scores on the update's rows, so it runs in every export and quantization
path the pruned student does.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import NamedTuple

import numpy as np
from torch import nn
from transformers import AutoModelForSequenceClassification

from components.kit.encoder_pruning import importance_scores, prune_ffn
from components.kit.modeling import Encoded, count_params, set_transformer_layers, transformer_layers

# Training batches the inserted block's FFN neurons are scored on (as prune.importance_batches).
SCORING_BATCHES = 20


class Growth(NamedTuple):
    """What a student may grow into: the full run's `distill.deeper_layers`, and `distill.layers`, taken as
    the teacher layers of a student that does not record its own."""

    layers: list[int]
    deeper: list[list[int]]


def teacher_layers(student_dir: Path, default: list[int] | None = None) -> list[int] | None:
    """The teacher layers the student's blocks were copied from, in order: its config's `teacher_layers`;
    without that record (a student made before it was kept) `default` when it has as many layers as the
    student, else None."""
    config = json.loads((Path(student_dir) / "config.json").read_text())
    if config.get("teacher_layers"):
        return [int(i) for i in config["teacher_layers"]]
    if default is not None and len(default) == config.get("num_hidden_layers"):
        return list(default)
    return None


def record_teacher_layers(student_dir: Path, layers: list[int]) -> None:
    """Write `teacher_layers` into a student folder's config.json (transformers keeps it through loading and
    saving)."""
    path = Path(student_dir) / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps(config | {"teacher_layers": [int(i) for i in layers]}, indent=2))


def next_layers(layers: list[int], deeper: list[list[int]], depth: int) -> list[int] | None:
    """The teacher layers of the grown student: `layers` plus the first layer, of the first set in `deeper`
    longer than `layers`, that `layers` lack and a teacher of `depth` layers has; None when none is left."""
    for candidate in deeper:
        if len(candidate) <= len(layers):
            continue
        missing = [i for i in candidate if i not in layers and i < depth]
        if missing:
            return sorted([*layers, missing[0]])
    return None


def grow(
    student_dir: Path,
    teacher: nn.Module,
    layers: list[int],
    grown: list[int],
    scoring: Encoded,
    teacher_logits: np.ndarray,
    pad_id: int,
    out: Path,
    seed: int,
    batch_size: int,
    alpha: float,
    temperature: float,
) -> dict:
    """Write to `out` a copy of the student folder with the `teacher`'s block `grown - layers` inserted (see
    the module); `scoring`: rows in the student's tokenization with the teacher's logits on them, to choose
    the inserted block's FFN neurons (`SCORING_BATCHES` batches of `batch_size`). Returns {"layers",
    "inserted", "params_before", "params_after"}."""
    (added,) = [i for i in grown if i not in layers]
    student = AutoModelForSequenceClassification.from_pretrained(student_dir, use_safetensors=True)
    before = count_params(student)
    blocks = list(transformer_layers(student))
    position = grown.index(added)
    blocks.insert(position, copy.deepcopy(transformer_layers(teacher)[added]))
    set_transformer_layers(student, nn.ModuleList(blocks))
    # pruned heads are recorded by block position: the blocks after the inserted one move down by one
    pruned = {int(k): v for k, v in (student.config.pruned_heads or {}).items()}
    student.config.pruned_heads = {(k if k < position else k + 1): v for k, v in pruned.items()}
    student.config.num_hidden_layers = len(blocks)
    student.config.teacher_layers = list(grown)
    width = student.config.intermediate_size
    if transformer_layers(student)[position].output.dense.in_features > width:
        _, by_neuron = importance_scores(
            student, scoring, teacher_logits, pad_id, SCORING_BATCHES, batch_size, alpha, temperature, seed
        )
        keep = [
            np.sort(np.argsort(-scores, kind="stable")[:width]) if i == position else np.arange(len(scores))
            for i, scores in enumerate(by_neuron)
        ]
        prune_ffn(student, keep)
    out.mkdir(parents=True, exist_ok=True)
    for item in Path(student_dir).iterdir():  # tokenizer, labels, trimmed vocabulary record
        if item.is_file() and item.name not in ("model.safetensors", "config.json"):
            shutil.copy2(item, out / item.name)
    student.save_pretrained(out, safe_serialization=True)
    return {"layers": list(grown), "inserted": added, "params_before": before, "params_after": count_params(student)}
