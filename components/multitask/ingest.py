"""Stage, ingest of the multitask task: load rows that carry a label for one or more tasks, check every task's
column, drop duplicates and split by seed.

Sources (`data.source`):
- `vader-all` (the offline default): every rated sentence of the vaderSentiment 3.3.2 source archive's four
  sources (movie snippets, tweets, editorials, product reviews), each with three labels derived from its mean
  human rating r (-4..+4) and its file, at `data.threshold` t (0.5):
  - `sentiment`: positive when r >= t, negative when r <= -t, none otherwise (the row's sentiment loss is
    masked: `components.kit.heads`);
  - `subjectivity`: opinionated when |r| >= t, neutral otherwise;
  - `source`: movie, tweet, editorial or product.
- a local CSV, JSONL or Parquet file with a `text` column and each task's column (`multitask.tasks`), read
  as strictly as the classification task reads its files (`components.kit.data`); an empty cell is a row
  without a label for that task;
- or several files: a task with a `source` of its own reads its column from that file. The rows of all
  files are joined on their text (`join_on_text`: a sentence labelled for one task in one file and for
  another in a second becomes one row with both labels); each file is checked for repeated rows alone.

Before anything is written, `check_tasks` refuses (`DataError`, the CLI exits 2) a task whose column is
missing, a task with fewer than two classes, a label outside a task's declared set, and rows with no label for
any task, naming the task and the column. De-duplication and splitting are the classification task's
(`components.kit.splits`): texts compared by `text_key`, a text with conflicting labels in any task dropped
in every copy, so no text is in two splits. The split is stratified on the first task every row has a label
for (`source` for the default).

Writes `train/validation/test.parquet` (`text` and one column per task, null where a row has no label) and
`data_card.json` (`tasks`: each task's column and labels, rows per split and per task, the sha256) to
`out_dir`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import DataConfig, TaskColumn
from components.kit.data import (
    VADER_MEMBERS,
    VADER_SHA256,
    VADER_VERSION,
    DataError,
    check_column_types,
    fetch_vader_archive,
    read_table,
    read_vader_ratings,
    workspace_path,
)
from components.kit.hashing import file_sha256
from components.kit.splits import check_duplicate_share, deduplicate, normalize_columns, stratified_split
from components.kit.tracking import StageResult, Tracker

BUILTIN = "vader-all"
# The archive's rated-sentence files (VADER_MEMBERS keys) as `source` labels.
SOURCE_LABELS = {"movie": "movie", "tweets": "tweet", "nyt": "editorial", "amazon": "product"}


def label_vader(archive: Path, threshold: float) -> pd.DataFrame:
    """Every rated sentence of the archive with its sentiment, subjectivity and source labels."""
    parts = []
    for key, member in VADER_MEMBERS.items():
        rated = read_vader_ratings(archive, member)
        r = rated["rating"]
        sentiment = pd.Series(np.where(r >= threshold, "positive", "negative")).where(r.abs() >= threshold, None)
        parts.append(
            pd.DataFrame(
                {
                    "text": rated["text"],
                    "sentiment": sentiment,
                    "subjectivity": np.where(r.abs() >= threshold, "opinionated", "neutral"),
                    "source": SOURCE_LABELS[key],
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def load_one(
    source: str, key: str, columns: tuple[str, ...], data: DataConfig, cache_dir: Path, root: Path
) -> tuple[pd.DataFrame, str, str]:
    """(rows, source description, sha256 of the source bytes) of the built-in data or one file (the params
    key `key` names it), the file's `columns` checked."""
    if source == BUILTIN:
        return (
            label_vader(fetch_vader_archive(cache_dir), data.threshold),
            f"vaderSentiment=={VADER_VERSION}",
            VADER_SHA256,
        )
    path = workspace_path(source, root, key)
    frame = read_table(path)
    check_column_types(frame, f"data file {path}", ("text", *columns))
    return frame, path.relative_to(Path(root).resolve()).as_posix(), file_sha256(path)


def load_source(
    data: DataConfig, tasks: dict[str, TaskColumn], cache_dir: Path, root: Path
) -> tuple[list[pd.DataFrame], str, str]:
    """(the rows of each file, the sources described, the sha256 of their bytes: the one file's, or of the
    files' sha256s in order). Tasks without a `source` of their own read data.source."""
    groups: dict[tuple[str, str], list[str]] = {}
    for name, task in tasks.items():
        where = (task.source, f"multitask.tasks.{name}.source") if task.source else (data.source, "data.source")
        groups.setdefault(where, []).append(task.column)
    loaded = [load_one(source, key, tuple(columns), data, cache_dir, root) for (source, key), columns in groups.items()]
    # each file gives its text and its own tasks' columns only, so two files' other columns never collide
    frames = [
        frame[[c for c in ("text", *columns) if c in frame.columns]] if len(groups) > 1 else frame
        for (frame, _, _), columns in zip(loaded, groups.values(), strict=True)
    ]
    if len(loaded) == 1:
        return frames, loaded[0][1], loaded[0][2]
    digest = hashlib.sha256("".join(sha for _, _, sha in loaded).encode()).hexdigest()
    return frames, " + ".join(source for _, source, _ in loaded), digest


def join_on_text(frames: list[pd.DataFrame], columns: tuple[str, ...]) -> pd.DataFrame:
    """The rows of every file, each text's labels filled in from the other rows of the same text (compared
    by `text_key`): one file's sentiment and another's topic for a sentence end up on each of its rows, which
    de-duplication then keeps once. Differing labels for one text stay as they are (de-duplication drops the
    text as conflicting)."""
    from components.kit.text import text_key

    frame = pd.concat(frames, ignore_index=True)
    if len(frames) == 1:
        return frame
    keys = frame["text"].map(text_key)
    for column in columns:
        if column in frame.columns:
            frame[column] = frame[column].fillna(frame[column].groupby(keys).transform("first"))
    return frame


def task_labels(frame: pd.DataFrame, tasks: dict[str, TaskColumn], source: str) -> dict[str, list[str]]:
    """Each task's label set (declared, else the sorted labels in its column), after checking the rows:
    DataError naming the task and its column for a missing column, a label outside the declared set, fewer
    than two classes, and rows that have no label for any task."""
    found: dict[str, list[str]] = {}
    for name, task in tasks.items():
        where = f"task {name} (column {task.column!r})"
        if task.column not in frame.columns:
            raise DataError(
                f"data source {source}: {where} is not in the data; its columns are {', '.join(map(str, frame.columns))}"
            )
        present = frame[task.column].dropna()
        seen = sorted(present.unique().tolist())
        if task.labels is not None:
            outside = sorted(set(seen) - set(task.labels))
            if outside:
                first = int(present[present.isin(outside)].index[0])
                raise DataError(
                    f"data source {source}: {where} holds {', '.join(map(repr, outside[:5]))}, outside its declared "
                    f"labels {task.labels} (first in row {first}); fix the rows or declare the labels in "
                    f"multitask.tasks.{name}.labels"
                )
        labels = list(task.labels) if task.labels is not None else seen
        if len(set(seen)) < 2:
            raise DataError(
                f"data source {source}: {where} has {len(seen)} class(es) in the data ({seen}); a task needs at "
                "least two to learn anything"
            )
        found[name] = labels
    columns = [t.column for t in tasks.values()]
    unlabelled = frame[columns].isna().all(axis=1)
    if unlabelled.any():
        first = int(np.flatnonzero(unlabelled.to_numpy())[0])
        raise DataError(
            f"data source {source}: {int(unlabelled.sum())} row(s) have no label for any task (columns "
            f"{', '.join(columns)}), first in row {first}: {str(frame.at[frame.index[first], 'text'])[:60]!r}; "
            "every row needs at least one"
        )
    return found


def stratify_column(frame: pd.DataFrame, tasks: dict[str, TaskColumn]) -> str | None:
    """The first task column every row has a label in, which the split is stratified on."""
    return next((t.column for t in tasks.values() if frame[t.column].notna().all()), None)


def describe(
    splits: dict[str, pd.DataFrame], tasks: dict[str, TaskColumn], labels: dict, source: str, sha256: str, dropped: dict
) -> dict:
    return {
        "source": source,
        "sha256": sha256,
        "tasks": {name: {"column": t.column, "labels": labels[name]} for name, t in tasks.items()},
        "duplicates_dropped": {"exact": dropped["exact"], "normalised": dropped["normalised"]},
        "conflicting_labels_dropped": dropped["conflicting_labels"],
        "rows": {name: len(df) for name, df in splits.items()},
        "label_balance": {
            split: {
                name: {str(k): int(v) for k, v in df[t.column].value_counts().sort_index().items()}
                for name, t in tasks.items()
            }
            for split, df in splits.items()
        },
    }


def run(
    data: DataConfig,
    tasks: dict[str, TaskColumn],
    out_dir: Path,
    tracker: Tracker,
    cache_dir: Path = Path("data/raw"),
    root: Path = Path("."),
) -> StageResult:
    frames, source, sha256 = load_source(data, tasks, cache_dir, root)
    columns = tuple(t.column for t in tasks.values())
    for i, part in enumerate(frames):
        part = normalize_columns(part, ("text", *columns))
        for column in columns:  # an empty cell (CSV) is a row without a label for that task
            if column in part.columns:
                part[column] = part[column].mask(part[column].str.strip() == "")
        check_duplicate_share(part, source, data.max_duplicate_share)
        frames[i] = part
    loaded = join_on_text(frames, columns)
    labels = task_labels(loaded, tasks, source)
    frame, dropped = deduplicate(loaded, label_columns=columns)
    frame = frame[["text", *columns]]
    splits = stratified_split(frame, data.split, data.seed, data.max_rows, by=stratify_column(frame, tasks))

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, df in splits.items():
        df.to_parquet(out_dir / f"{name}.parquet", index=False)
    card = describe(splits, tasks, labels, source, sha256, dropped)
    (out_dir / "data_card.json").write_text(json.dumps(card, indent=2))
    tracker.log_params({"source": source, "source_sha256": sha256, "tasks": ",".join(tasks)})
    tracker.log_metrics(
        {f"rows_{k}": v for k, v in card["rows"].items()} | {f"dropped_{k}": v for k, v in dropped.items()}
    )
    tracker.log_artifact(out_dir / "data_card.json")
    return StageResult(
        metrics={f"rows_{k}": float(v) for k, v in card["rows"].items()},
        outputs={"prepared": out_dir},
        info={"card": card},
    )
