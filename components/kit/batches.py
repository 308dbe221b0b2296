"""The batches of an incremental update, as files: a batch's name, its labels against a model's, the texts an
earlier batch holds, the batches a warm start has seen. Torch-free, so an update that refuses a batch (a
label the champion does not know) or has nothing to learn (data it has seen) ends before any model loads.

Used by `components.classification.update` and `flows/update.py`; a batch is a folder of train/validation/test
parquet splits (columns text, label) and its data card, as the ingest stage writes them.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd

from components.kit.data import DataError

SPLIT_FILES = ("train.parquet", "validation.parquet", "test.parquet", "data_card.json")


def batch_name(source: str) -> str:
    """A short name for a data source: `vader-amazon` -> amazon, `data/week-12.csv` -> week-12."""
    stem = source.removeprefix("vader-") if source.startswith("vader-") else Path(source).stem or source
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.") or "batch"


def read_labels(model_dir: Path) -> list[str]:
    return json.loads((Path(model_dir) / "labels.json").read_text())


def unknown_labels(batch: Path, labels: list[str]) -> list[str]:
    """Labels of the batch (any split) the model does not have."""
    seen: set[str] = set()
    for split in ("train", "validation", "test"):
        seen |= set(pd.read_parquet(batch / f"{split}.parquet")["label"].dropna().astype(str))
    return sorted(seen - set(labels))


def check_labels(batch: Path, labels: list[str], what: str) -> None:
    """An update cannot add classes: a label the model does not know stops it, naming the label."""
    unknown = unknown_labels(batch, labels)
    if unknown:
        raise DataError(
            f"the new batch has labels {', '.join(map(repr, unknown))} that {what} does not know (its labels: "
            f"{', '.join(labels)}); an update keeps the label set. To add a class, run the full pipeline "
            "(`miniaturize run`) on data with every label"
        )


def seen_keys(batches: list[Path]) -> set[str]:
    from components.kit.text import text_key

    keys: set[str] = set()
    for folder in batches:
        for split in ("train", "validation", "test"):
            path = folder / f"{split}.parquet"
            if path.exists():
                keys |= set(pd.read_parquet(path)["text"].map(text_key))
    return keys


def drop_seen(batch: Path, earlier: list[Path]) -> int:
    """Remove from the new batch's splits (in place) every text an earlier batch holds, compared as the
    validate stage compares texts: no sentence is ever in two batches' splits. Returns how many went."""
    from components.kit.text import text_key

    keys = seen_keys(earlier)
    dropped = 0
    for split in ("train", "validation", "test"):
        path = batch / f"{split}.parquet"
        frame = pd.read_parquet(path)
        keep = ~frame["text"].map(text_key).isin(keys)
        dropped += int((~keep).sum())
        if not keep.all():
            frame[keep].reset_index(drop=True).to_parquet(path, index=False)
    return dropped


def copy_batch(prepared: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in SPLIT_FILES:
        if (prepared / name).exists():
            shutil.copy2(prepared / name, out / name)


def earlier_batches(champion: Path) -> dict[str, Path]:
    """The batches the champion has seen, by name, in the order they arrived (the data cards' `arrived`)."""
    folders = [p for p in sorted((champion / "batches").iterdir()) if p.is_dir()]

    def arrived(folder: Path) -> int:
        return int(json.loads((folder / "data_card.json").read_text()).get("arrived", 0))

    return {p.name: p for p in sorted(folders, key=arrived)}
