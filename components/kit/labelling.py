"""What the labels of a prepared data folder are, and everything that follows from them: one label per row
(`SingleLabel`, a classifier) or one per task (`components.kit.heads.Heads`, a multitask model). The two
answer the same questions (the config fields of a model for them, how a split is encoded, the training
objective, the scores of predictions), so a stage asks `labelling_of(prepared)` once and serves both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.kit.heads import CONFIG_KEY, Heads
from components.kit.modeling import Encoded, accuracy, encode
from components.kit.training import SINGLE_LABEL, Objective, TaskMix


@dataclass(frozen=True)
class SingleLabel:
    """One label per row, from the `label` column; `labels` in logit order."""

    labels: tuple[str, ...]

    @property
    def names(self) -> list[str]:
        """The model folder's labels.json: the name of each logit."""
        return list(self.labels)

    def config_fields(self) -> dict:
        return {
            "num_labels": len(self.labels),
            "id2label": dict(enumerate(self.labels)),
            "label2id": {name: i for i, name in enumerate(self.labels)},
        }

    def configure(self, config):
        """`config` (a transformers config) with these labels: what loading a model with it builds."""
        for key, value in self.config_fields().items():
            setattr(config, key, value)
        return config

    def encode(self, tokenizer, frame: pd.DataFrame, max_length: int) -> Encoded:
        gold = frame["label"].tolist() if "label" in frame.columns else None
        return encode(tokenizer, frame["text"].tolist(), gold, list(self.labels), max_length)

    def objective(self, mix: TaskMix | None = None) -> Objective:
        return SINGLE_LABEL

    def scores(self, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        return {"accuracy": accuracy(logits, labels)}

    def score(self, logits: np.ndarray, labels: np.ndarray) -> float:
        return accuracy(logits, labels)


Labelling = SingleLabel | Heads


def labelling_of(prepared: Path) -> Labelling:
    """The labelling its data card names: `tasks` (multitask data) or `labels`."""
    card = json.loads((Path(prepared) / "data_card.json").read_text())
    if card.get("tasks"):
        return Heads.from_card(card["tasks"])
    return SingleLabel(tuple(card["labels"]))


def model_labelling(model_dir: Path, prepared: Path) -> Labelling:
    """The labelling of a model folder (PyTorch or ONNX): its `task_heads` with the data card's columns for a
    multitask model, else its labels.json; what its predictions on `prepared` are scored with."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    if config.get(CONFIG_KEY):
        data = labelling_of(prepared)
        return Heads.of(dict(config[CONFIG_KEY]), data.columns if isinstance(data, Heads) else None)
    return SingleLabel(tuple(json.loads((Path(model_dir) / "labels.json").read_text())))
