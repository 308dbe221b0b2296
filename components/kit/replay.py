"""The replay buffer of incremental learning: a bounded, fair sample of every labelled batch seen so far.

When a deployed classifier learns a new batch, it trains on that batch plus the buffer, so that it keeps
rehearsing what the earlier batches taught it instead of forgetting them. `replay_buffer` builds the next
buffer from the previous one and the new batch's train rows:

- `batch_shares` splits `size` rows equally among the batches; a batch with fewer rows than its share
  keeps all of them and its leftover is split among the others (water-filling), so the buffer is full
  whenever enough rows exist;
- inside a batch the rows are drawn stratified by label, in proportion to the label counts (largest
  remainder), so a cut never drops a rare label that the batch's share has room for;
- it is a reservoir: a batch's rows in the new buffer are a subset of its rows in the previous one, drawn
  with a generator seeded by (seed, batch name), so the same inputs always give the same buffer and a
  batch's kept rows only ever shrink as more batches arrive, never get re-drawn from elsewhere.

Each row may carry the soft outputs (`logits`) of the teacher that learned its batch, taken when it learned it
(dark experience replay, Buzzega et al. 2020): later updates distil toward what the model knew of the batch
then, not toward a previous model that earlier updates may have moved (docs/incremental.md has what it
measured). `stored_logits` reads them back; a row without them (`None`) is taught by the previous model.

`batch_balanced_draw` is how an update then trains on the new batch and the buffer: each epoch draws its rows
so that every batch is drawn equally often, the new one (thousands of rows) no more than each earlier one
(its share of the buffer).

Pure: data frames in, a data frame out; the caller stores the buffer (a parquet file beside the model).
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

COLUMNS = ["text", "label", "batch"]
LOGITS = "logits"  # optional: one list of floats per row, or None


def with_logits(rows: pd.DataFrame, logits: np.ndarray | None) -> pd.DataFrame:
    """`rows` with a `logits` column: row i's soft outputs `logits[i]` (float32), or None for every row."""
    column = [None] * len(rows) if logits is None else [np.asarray(row, dtype=np.float32) for row in logits]
    return rows.assign(**{LOGITS: column})


def stored_logits(rows: pd.DataFrame, n_labels: int) -> np.ndarray:
    """The stored soft outputs of `rows` as an (n, n_labels) float32 array, NaN where a row has none (no
    `logits` column: none at all)."""
    out = np.full((len(rows), n_labels), np.nan, dtype=np.float32)
    if LOGITS in rows.columns:
        for i, row in enumerate(rows[LOGITS].tolist()):
            if row is not None and len(row) == n_labels:
                out[i] = np.asarray(row, dtype=np.float32)
    return out


def batch_shares(counts: dict[str, int], size: int) -> dict[str, int]:
    """How many rows of each batch the buffer keeps: an equal share of `size` each, a batch with fewer rows
    than its share keeping all it has and the rest re-split among the others. The shares add up to
    min(size, total rows). When the rows do not split evenly, the extra rows go to the newest batches
    (last in `counts`' order): with `size` below the number of batches, the buffer holds the latest ones."""
    if size < 0:
        raise ValueError(f"size must be >= 0, not {size}")
    if any(count < 0 for count in counts.values()):
        raise ValueError(f"row counts must be >= 0: {counts}")
    shares = {batch: 0 for batch in counts}
    open_batches = [batch for batch, count in counts.items() if count > 0]
    left = min(size, sum(counts.values()))
    while left and open_batches:
        each, extra = divmod(left, len(open_batches))
        small = [batch for batch in open_batches if counts[batch] <= each]
        if small:  # they take all they have; what they leave is split again among the rest
            for batch in small:
                shares[batch] = counts[batch]
                left -= counts[batch]
            open_batches = [batch for batch in open_batches if batch not in small]
            continue
        for batch in open_batches:
            shares[batch] = each
        for batch in open_batches[len(open_batches) - extra :]:
            shares[batch] += 1
        left = 0
    return shares


def label_quotas(labels: pd.Series, k: int) -> dict[str, int]:
    """k rows split among the labels in proportion to their counts (largest remainder; ties to the label
    that sorts first), never more than a label has. Labels with no quota are left out."""
    counts = labels.value_counts().sort_index()
    total = int(counts.sum())
    k = min(k, total)
    # Integer arithmetic: quota = k * n / total exactly, floor plus remainder.
    floors = {label: k * int(n) // total for label, n in counts.items()}
    remainders = {label: k * int(n) % total for label, n in counts.items()}
    short = k - sum(floors.values())
    for label in sorted(remainders, key=lambda label: -remainders[label])[:short]:
        floors[label] += 1
    return {label: quota for label, quota in floors.items() if quota > 0}


def stratified_sample(rows: pd.DataFrame, k: int, rng: np.random.Generator) -> pd.DataFrame:
    """k of `rows` drawn without replacement, stratified by label; all of them when k >= len(rows). The
    rows keep their order."""
    if k >= len(rows):
        return rows
    chosen: list[int] = []
    for label, quota in label_quotas(rows["label"], k).items():
        positions = np.flatnonzero((rows["label"] == label).to_numpy())
        chosen.extend(rng.choice(positions, size=quota, replace=False).tolist())
    return rows.iloc[sorted(chosen)]


def batch_rng(seed: int, batch: str) -> np.random.Generator:
    """A generator of its own for each batch: its draw does not depend on which other batches are in the
    buffer or in what order. crc32, unlike hash(), is the same in every process."""
    return np.random.default_rng([seed, zlib.crc32(batch.encode("utf-8"))])


def replay_buffer(
    previous: pd.DataFrame | None, new_train: pd.DataFrame, batch: str, size: int, seed: int
) -> pd.DataFrame:
    """The next replay buffer: the previous buffer's rows plus `new_train`'s (tagged `batch`), cut to at most
    `size` rows with `batch_shares` per batch and a label-stratified draw inside each.

    `previous` has columns text, label, batch (None or empty before the first update); `new_train` has text
    and label (other columns are dropped); either may also hold `logits`, kept with its rows. Rows of
    `previous` already tagged `batch` are replaced by `new_train`: re-running an update gives the same buffer.
    The result has columns text, label, batch (and `logits` when either input has it, None for rows without
    them), the batches in the order they were first seen, each batch's rows in their previous order.
    """
    if size < 1:
        raise ValueError(f"the replay buffer size must be >= 1, not {size}")
    keep = LOGITS in new_train.columns or (previous is not None and LOGITS in previous.columns)
    columns = COLUMNS + [LOGITS] if keep else COLUMNS
    older = pd.DataFrame(columns=COLUMNS) if previous is None else previous
    new = new_train.assign(batch=batch)
    if keep:  # a frame without stored outputs gets None in their place
        older, new = (f if LOGITS in f.columns else with_logits(f, None) for f in (older, new))
    frames = [older.loc[older["batch"] != batch, columns], new[columns]]
    # Empty frames are left out: concatenated with others, their untyped columns would change the dtypes.
    frames = [rows for rows in frames if len(rows)]
    if not frames:
        return pd.DataFrame({column: pd.Series(dtype=str if column != LOGITS else object) for column in columns})
    pool = pd.concat(frames, ignore_index=True)
    order = list(dict.fromkeys(pool["batch"].tolist()))
    groups = {name: pool[pool["batch"] == name] for name in order}
    shares = batch_shares({name: len(rows) for name, rows in groups.items()}, size)
    kept = [stratified_sample(groups[name], shares[name], batch_rng(seed, name)) for name in order]
    return pd.concat([rows for rows in kept if len(rows)], ignore_index=True)[columns]


def batch_balanced_draw(batches) -> np.ndarray | None:
    """The probability of drawing each row so that every batch is drawn equally often: a row of a batch
    with n rows weighs 1 / n. `batches` names each row's batch; None (every row once per epoch) when there
    is only one batch."""
    names = pd.Series(list(batches), dtype=object)
    counts = names.map(names.value_counts())
    if names.nunique() < 2:
        return None
    weight = 1.0 / counts.to_numpy(dtype=float)
    return weight / weight.sum()


def topped_up(buffer: pd.DataFrame, trains: dict[str, pd.DataFrame], size: int, seed: int) -> pd.DataFrame:
    """`buffer` with each batch's share of `size` (`batch_shares` over the batches' train splits `trains`)
    filled from its train split where the buffer holds fewer of its rows: a buffer built with a smaller
    `replay_size` grows to the size set now, never past it (a full buffer is returned as it is). Every row
    the buffer has is kept (with its stored outputs); a row added has none (`logits` None), so the previous
    model teaches it. Added rows are drawn label-stratified from the train rows the buffer lacks, with the
    batch's own generator; each batch's rows stay together, in the buffer's order of batches (a batch it
    lacks altogether last)."""
    if len(buffer) >= size:
        return buffer
    shares = batch_shares({name: len(rows) for name, rows in trains.items()}, size)
    room = size - len(buffer)  # the buffer never grows past `size`, however its rows were shared out
    have = buffer if LOGITS in buffer.columns else with_logits(buffer, None)
    order = list(dict.fromkeys(have["batch"].tolist())) + [name for name in trains if name not in set(have["batch"])]
    parts = []
    for name in order:
        kept = have[have["batch"] == name]
        train = trains.get(name)
        missing = 0 if train is None else min(shares[name] - len(kept), room)
        parts.append(kept)
        if missing > 0:
            spare = train.loc[~train["text"].isin(set(kept["text"])), ["text", "label"]]
            extra = stratified_sample(spare, min(missing, len(spare)), batch_rng(seed, name))
            room -= len(extra)
            parts.append(with_logits(extra.assign(batch=name), None)[have.columns])
    parts = [rows for rows in parts if len(rows)]
    return pd.concat(parts, ignore_index=True) if parts else have
