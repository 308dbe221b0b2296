"""Several classification tasks on one network: each task owns a slice of the classifier's logits.

A multitask model is a plain sequence classifier whose output layer has one block of rows per task
(sentiment: 2, subjectivity: 2, source: 4 gives 8 logits). The rows of one block never mix with another's,
so the layer is one small linear head per task stored as one matrix: the model stays a stock Hugging Face
classifier that every stage of the compression chain (pruning, vocabulary trimming, Optimum's ONNX export,
ONNX Runtime's int8) already handles. `Heads` says which block is whose; the model's `config.json` carries it
(`task_heads`), so any folder in the chain knows its tasks.

Labels of a multitask split are one integer column per task, -1 (`MISSING`) where a row has no label for that
task. The loss (`Heads.loss`) is a weighted sum over tasks of `kd_loss` on each task's block: a row without a
task's label learns that task from the teacher's soft outputs alone when there is a teacher, and is left out
of that task's loss when there is none (a teacher's own fine-tuning).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from components.kit.losses import UNLABELLED, kd_loss
from components.kit.modeling import Encoded
from components.kit.training import Objective, TaskMix

MISSING = UNLABELLED  # a row's label for a task it has no label for
# In a model's config.json: [[task, [label, ...]], ...] in output order. A list, not a mapping:
# transformers writes config.json with sorted keys, which would reorder the tasks against the logits.
CONFIG_KEY = "task_heads"


@dataclass(frozen=True)
class Heads:
    """The tasks of a multitask model, in output order, each with its labels (the order of its logits) and
    the data column holding them (the task's own name unless given)."""

    tasks: dict[str, tuple[str, ...]]
    columns: dict[str, str] | None = None

    @classmethod
    def of(cls, tasks: dict[str, list[str]], columns: dict[str, str] | None = None) -> Heads:
        return cls({name: tuple(labels) for name, labels in tasks.items()}, columns)

    @classmethod
    def from_card(cls, tasks: dict[str, dict]) -> Heads:
        """The heads a multitask data card names: {task: {"column": ..., "labels": [...]}}."""
        return cls.of({n: t["labels"] for n, t in tasks.items()}, {n: t["column"] for n, t in tasks.items()})

    def column(self, task: str) -> str:
        return (self.columns or {}).get(task, task)

    @property
    def names(self) -> list[str]:
        """The model folder's labels.json: the name of each logit, `task:label`."""
        return [f"{task}:{label}" for task, labels in self.tasks.items() for label in labels]

    @classmethod
    def from_config(cls, config) -> Heads:
        """The heads a model's config records (`task_heads`); ValueError when it records none."""
        recorded = getattr(config, CONFIG_KEY, None)
        if not recorded:
            raise ValueError("the model's config.json has no task_heads: it is not a multitask model")
        return cls.of(dict(recorded))

    @property
    def width(self) -> int:
        """How many logits the model has in all."""
        return sum(len(labels) for labels in self.tasks.values())

    @property
    def slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for name, labels in self.tasks.items():
            out[name] = slice(start, start + len(labels))
            start += len(labels)
        return out

    def config_fields(self) -> dict:
        """What a model's config records: the heads, and every logit named `task:label`."""
        names = self.names
        return {
            CONFIG_KEY: [[task, list(labels)] for task, labels in self.tasks.items()],
            "num_labels": self.width,
            "id2label": dict(enumerate(names)),
            "label2id": {name: i for i, name in enumerate(names)},
        }

    def configure(self, config):
        """`config` (a transformers config) with these heads: what loading a model with it builds."""
        for key, value in self.config_fields().items():
            setattr(config, key, value)
        return config

    def split(self, logits):
        """{task: that task's block of logits}, for numpy arrays and tensors alike (last axis)."""
        return {name: logits[..., cut] for name, cut in self.slices.items()}

    def loss(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor | None,
        labels: torch.Tensor,
        alpha: float,
        temperature: float,
        weights: dict[str, float] | None = None,
    ) -> torch.Tensor:
        """sum over tasks of weight * kd_loss(task block), labels (rows, tasks) with MISSING where a row has no
        label for a task. Without a teacher a task with no label in the batch adds nothing."""
        total = student.new_zeros(())
        for t, (name, cut) in enumerate(self.slices.items()):
            weight = 1.0 if weights is None else weights.get(name, 1.0)
            target = labels[:, t]
            if teacher is None and not (target != MISSING).any():
                continue
            part = kd_loss(
                student[:, cut], teacher[:, cut] if teacher is not None else None, target, alpha, temperature
            )
            total = total + weight * part
        return total

    def predictions(self, logits: np.ndarray) -> dict[str, np.ndarray]:
        """{task: the index of the predicted label of each row}."""
        return {name: block.argmax(-1) for name, block in self.split(np.asarray(logits)).items()}

    def accuracies(self, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """{task: accuracy over the rows that have a label for it} (NaN for a task with none)."""
        out = {}
        for t, (name, predicted) in enumerate(self.predictions(logits).items()):
            known = labels[:, t] != MISSING
            out[name] = float((predicted[known] == labels[known, t]).mean()) if known.any() else float("nan")
        return out

    def mean_accuracy(self, logits: np.ndarray, labels: np.ndarray) -> float:
        """The mean of the tasks' accuracies: what early stopping and candidate choices compare."""
        return float(np.nanmean(list(self.accuracies(logits, labels).values())))

    def objective(self, mix: TaskMix | None = None) -> Objective:
        """The training objective of these heads: the masked loss weighted by `mix.weights`, early stopping on
        the mean of the tasks' validation accuracies, and with `mix.balanced` rows drawn task-balanced
        (`balanced_draw`)."""
        mix = mix or TaskMix()

        def loss(student, teacher, labels, alpha, temperature):
            return self.loss(student, teacher, labels, alpha, temperature, mix.weights)

        return Objective(loss=loss, score=self.mean_accuracy, sampling=balanced_draw if mix.balanced else None)

    def encode(self, tokenizer, frame, max_length: int) -> Encoded:
        """A multitask split tokenized: labels (rows, tasks), MISSING where a row has no label for a task (or
        for every task where the frame has no task columns: an unlabelled set)."""
        ids = tokenizer(frame["text"].tolist(), truncation=True, max_length=max_length)["input_ids"]
        return Encoded(ids, self.gold(frame))

    def gold(self, frame) -> np.ndarray:
        """The frame's labels as (rows, tasks) label indices, MISSING where a row has no label for a task (or
        for every task where the frame has no task columns)."""
        labels = np.full((len(frame), len(self.tasks)), MISSING, dtype=np.int64)
        for t, (name, names) in enumerate(self.tasks.items()):
            column = self.column(name)
            if column not in frame.columns:
                continue
            index = {label: i for i, label in enumerate(names)}
            labels[:, t] = [MISSING if value is None or value != value else index[value] for value in frame[column]]
        return labels

    def scores(self, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """Each task's accuracy (`accuracy.<task>`) and their mean (`accuracy`)."""
        per_task = self.accuracies(logits, labels)
        return {"accuracy": self.mean_accuracy(logits, labels)} | {f"accuracy.{k}": v for k, v in per_task.items()}

    def score(self, logits: np.ndarray, labels: np.ndarray) -> float:
        return self.mean_accuracy(logits, labels)


def balanced_draw(labels: np.ndarray) -> np.ndarray | None:
    """The probability of drawing each row so that every task's labelled rows are drawn equally often: a row
    weighs the sum, over the tasks it has a label for, of 1 / (rows labelled for that task). A task labelled
    on fewer rows (sentiment, on the rows with a clear rating) is then seen as often as one every row has.
    A row with no label (a transfer sentence, learned from the teacher alone) weighs the labelled rows' mean.
    None (every row once) for labels that are not one column per task, or no label at all."""
    if labels.ndim != 2:
        return None
    known = labels != MISSING
    if not known.any():
        return None
    weight = (known / np.maximum(known.sum(axis=0), 1)).sum(axis=1)
    labelled = known.any(axis=1)
    weight[~labelled] = weight[labelled].mean()
    return weight / weight.sum()
