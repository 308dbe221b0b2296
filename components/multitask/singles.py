"""The single-task baseline's inputs: one task's view of the multitask data and of the multitask teacher.

The multitask student is worth shipping only if it beats running one single-task student per task. The
baseline runs the classification task's own compression chain once per task (flows/tasks/multitask.py,
`singles`), on what this module writes for the task:

- `project_data`: a classification prepared folder (`text`, `label`) of the rows that carry the task's
  label, every split as the multitask ingest split it (so both are tested on the same sentences), and a data
  card with the task's labels;
- `teacher_view`: the multitask teacher with its output layer cut to the task's block of rows: the same
  encoder and the same head, as a plain single-label classifier. The single-task student learns from exactly
  the teacher the multitask student learns from, so the comparison isolates sharing the student;
- `carry_soft_targets`: the view's soft targets on the task's train rows, cut from the multitask teacher's
  stored ones (the view computes exactly that block of logits), so no chain runs the teacher again.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from components.config import section_hash
from components.kit import soft_targets
from components.kit.heads import CONFIG_KEY, Heads
from components.kit.labelling import SingleLabel
from components.kit.modeling import save_model

SPLITS = ("train", "validation", "test")


def project_data(prepared: Path, task: str, out: Path) -> dict:
    """Write the rows of `prepared` that have a label for `task` as single-label splits into `out`; returns
    its data card."""
    prepared, out = Path(prepared), Path(out)
    card = json.loads((prepared / "data_card.json").read_text())
    spec = card["tasks"][task]
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for split in SPLITS:
        frame = pd.read_parquet(prepared / f"{split}.parquet")
        labelled = frame[frame[spec["column"]].notna()]
        single = pd.DataFrame({"text": labelled["text"], "label": labelled[spec["column"]].astype(str)})
        single.reset_index(drop=True).to_parquet(out / f"{split}.parquet", index=False)
        rows[split] = len(single)
    single_card = {
        "source": f"{card.get('source', '')} (task {task})",
        "sha256": card.get("sha256", ""),
        "task": task,
        "labels": list(spec["labels"]),
        "rows": rows,
    }
    (out / "data_card.json").write_text(json.dumps(single_card, indent=2))
    return single_card


def output_layer(model: torch.nn.Module, width: int) -> torch.nn.Linear:
    """The last linear layer producing `width` outputs: the classifier's logits."""
    found = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == width]
    if not found:
        raise ValueError(f"the model has no linear layer with {width} outputs to cut a task's head from")
    return found[-1]


def teacher_view(teacher: Path, task: str, out: Path) -> Path:
    """Write the multitask `teacher` as a single-label classifier for `task` (its block of the output layer)
    into `out`."""
    teacher, out = Path(teacher), Path(out)
    model = AutoModelForSequenceClassification.from_pretrained(teacher, use_safetensors=True)
    heads = Heads.from_config(model.config)
    if task not in heads.tasks:
        raise ValueError(f"the teacher has no head for task {task!r} (its tasks: {', '.join(heads.tasks)})")
    rows = heads.slices[task]
    layer = output_layer(model, heads.width)
    cut = torch.nn.Linear(layer.in_features, rows.stop - rows.start, bias=layer.bias is not None)
    with torch.no_grad():
        cut.weight.copy_(layer.weight[rows])
        if layer.bias is not None:
            cut.bias.copy_(layer.bias[rows])
    replace_module(model, layer, cut)
    labels = SingleLabel(heads.tasks[task])
    labels.configure(model.config)
    delattr(model.config, CONFIG_KEY)
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    metrics_file = teacher / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    shutil.rmtree(out, ignore_errors=True)
    save_model(model, tokenizer, labels.names, out, {"view_of": str(teacher), "task": task, **metrics})
    return out


def replace_module(model: torch.nn.Module, old: torch.nn.Module, new: torch.nn.Module) -> None:
    for parent in model.modules():
        for name, child in parent.named_children():
            if child is old:
                setattr(parent, name, new)
                return
    raise ValueError("the layer is not part of the model")


def carry_soft_targets(teacher: Path, prepared: Path, view: Path, projected: Path, task: str, max_length: int) -> bool:
    """Store in the `view` teacher's folder its logits on the task's train rows (`projected`), cut from the
    multitask `teacher`'s stored logits on the train split of `prepared` at `max_length` tokens; False (and
    nothing written) when the teacher has none stored at that length: the chain then computes them."""
    teacher, prepared, view, projected = Path(teacher), Path(prepared), Path(view), Path(projected)
    frame = pd.read_parquet(prepared / "train.parquet")
    key = section_hash(soft_targets.key_inputs(teacher, prepared, "train", max_length))
    logits = soft_targets.find([teacher / soft_targets.FOLDER], key, len(frame))
    if logits is None:
        return False
    card = json.loads((prepared / "data_card.json").read_text())
    heads = Heads.from_card(card["tasks"])
    labelled = frame[heads.column(task)].notna().to_numpy()
    inputs = soft_targets.key_inputs(view, projected, "train", max_length)
    soft_targets.store(
        view / soft_targets.FOLDER, section_hash(inputs), inputs, logits[labelled][:, heads.slices[task]]
    )
    return True
