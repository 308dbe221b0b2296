"""Labelled rows into train, validation and test, shared by the ingest stages of the labelled tasks: strict
reading of a hub dataset, de-duplication by the key the validate stage compares texts by
(`components.kit.text.text_key`), so no text lands in two splits, and a deterministic split by seed
(stratified), or the split a `split` column gives.

The label columns are named by the caller: `label` for a classifier, one column per task for a multitask
model. A text that carries conflicting labels in any of them is dropped in every copy.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from components.config import SPLITS
from components.kit.data import DataError
from components.kit.text import text_key


def read_hub_dataset(dataset_id: str) -> pd.DataFrame:
    try:
        import datasets  # optional, only for hub ids
    except ImportError:
        raise DataError(
            f"{dataset_id!r} is neither a file nor a built-in source; "
            "hub datasets need `pip install datasets` and a connection"
        ) from None
    try:
        loaded = datasets.load_dataset(dataset_id)
    except Exception as err:  # noqa: BLE001 - the hub raises many kinds; the message matters
        raise DataError(f"could not load hub dataset {dataset_id!r}: {err}") from None
    return pd.concat([split.to_pandas() for split in loaded.values()], ignore_index=True)


def normalize_columns(frame: pd.DataFrame, columns: tuple[str, ...] = ("text", "label")) -> pd.DataFrame:
    """Keep the text and label `columns` as strings (None where missing) when present; validation reports
    what is missing."""
    frame = frame.copy()
    for column in columns:
        if column in frame.columns:
            frame[column] = frame[column].map(
                lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
            )
    return frame


def conflicting_label_rows(keys: pd.Series, labels: pd.Series) -> pd.Series:
    """True for every row whose text (by key) carries more than one label in the data; missing labels are
    not counted as a label (the validate stage reports them)."""
    pairs = pd.DataFrame({"key": keys, "label": labels}).dropna()
    per_key = pairs.groupby("key")["label"].nunique()
    return keys.isin(per_key.index[per_key > 1])


def deduplicate(
    frame: pd.DataFrame, label_columns: tuple[str, ...] = ("label",)
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The rows to split, and how many were dropped and why.

    Texts are compared by `text_key`, as the validate stage compares them, so no text lands in two splits.
    A text with conflicting labels is dropped in every copy: which label is right is unknown, and any copy
    kept would put it in some split. Of the rest the first row of each text is kept; a dropped row is
    `exact` when an earlier row has the very same text, `normalised` when it differs in case or spacing.
    Empty and whitespace-only texts are only dropped as exact copies: the validate stage refuses them and
    should count them all.
    """
    if "text" not in frame.columns:  # nothing to compare by; the validate stage reports the schema
        deduped = frame.drop_duplicates().reset_index(drop=True)
        return deduped, {"exact": len(frame) - len(deduped), "normalised": 0, "conflicting_labels": 0}
    keys = frame["text"].map(text_key)
    keys = keys.mask(keys == "")  # empty texts compare as missing: not de-duplicated, see above
    conflicting = pd.Series(False, index=frame.index)
    for column in label_columns:
        if column in frame.columns:
            conflicting |= conflicting_label_rows(keys, frame[column])
    exact = frame["text"].duplicated() & ~conflicting
    normalised = keys.duplicated() & keys.notna() & ~exact & ~conflicting
    keep = ~(conflicting | exact | normalised)
    counts = {
        "exact": int(exact.sum()),
        "normalised": int(normalised.sum()),
        "conflicting_labels": int(conflicting.sum()),
    }
    return frame[keep].reset_index(drop=True), counts


def check_duplicate_share(frame: pd.DataFrame, source: str, max_share: float) -> None:
    """A few repeated rows are dropped quietly; many exact repeats mean a broken export (rows appended twice,
    a join that fanned out), which training on the rest would hide. Texts that differ only in case or
    spacing are ordinary data and do not count. `frame` is the data before de-duplication."""
    dropped = int(frame.duplicated(subset=["text"] if "text" in frame.columns else None).sum())
    share = dropped / len(frame) if len(frame) else 0.0
    if share > max_share and "text" in frame.columns:
        text, count = next(iter(frame["text"].value_counts().items()))
        raise DataError(
            f"data source {source}: {dropped} of {len(frame)} rows ({share:.0%}) repeat an earlier "
            f"row's text, more than data.max_duplicate_share {max_share:.0%}; most repeated: "
            f"{str(text)[:60]!r} x{count}"
        )


def stratified_split(
    frame: pd.DataFrame,
    shares: tuple[float, float, float],
    seed: int,
    max_rows: int | None = None,
    by: str | None = "label",
) -> dict[str, pd.DataFrame]:
    """Deterministic split by seed, stratified on the column `by` when every row has a value there (None:
    not stratified)."""
    rng = np.random.default_rng(seed)
    groups = (
        [idx for _, idx in frame.groupby(by, sort=True).indices.items()]
        if by is not None and by in frame.columns and frame[by].notna().all()
        else [np.arange(len(frame))]
    )
    if max_rows is not None and max_rows < len(frame):
        keep = max_rows / len(frame)
        groups = [rng.permutation(g)[: max(3, round(len(g) * keep))] for g in groups]
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    for group in groups:
        order = rng.permutation(group)
        n_train = round(len(order) * shares[0])
        n_val = round(len(order) * shares[1])
        parts["train"].append(order[:n_train])
        parts["validation"].append(order[n_train : n_train + n_val])
        parts["test"].append(order[n_train + n_val :])
    return {name: frame.iloc[np.sort(np.concatenate(idx))].reset_index(drop=True) for name, idx in parts.items()}


def given_splits(frame: pd.DataFrame, source: str) -> dict[str, pd.DataFrame]:
    """The splits a `split` column assigns (train, validation or test on every row), for data whose split is
    fixed elsewhere: e.g. the union of batches an incremental update saw, so a model trained on it from
    scratch is tested on the very sentences the updates were tested on."""
    values = frame["split"].astype(str)
    bad = sorted(set(values) - set(SPLITS))
    if bad:
        raise DataError(
            f"data source {source}: column split holds {', '.join(map(repr, bad[:5]))}; allowed: {', '.join(SPLITS)}"
        )
    rows = frame.drop(columns=["split"])
    return {name: rows[values == name].reset_index(drop=True) for name in SPLITS}
