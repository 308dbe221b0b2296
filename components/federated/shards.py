"""The offline demonstration's private shards: one client per rated source of the vaderSentiment archive
(movie snippets, product reviews, tweets, editorials), each prepared exactly as the ingest stage prepares
that source (`vader-<name>`: labelled by threshold, de-duplicated, split by `data.seed`, no transfer set),
into `out_dir/<name>/`, the layout a client reads (train, validation and test parquet files, data_card.json).

A sentence that two sources share stays with the first client that has it (the order of
`federated.clients`), so no test sentence of one client is another's training sentence. The union of the
test splits, each row naming its client, is the pooled test set (`out_dir/pooled/test.parquet`) that
measures the global model.

`shard_sha256` is a shard's content hash (its splits' texts and labels): each client reports it with its
updates, and the registered model's lineage names them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from components.config import SPLITS, DataConfig
from components.kit.text import text_key
from components.kit.tracking import NullTracker, PrefixedTracker, Tracker

POOLED = "pooled"


def source_of(client: str) -> str:
    """The data source a demonstration client holds: `vader-<name>`."""
    return f"vader-{client}"


def drop_shared(shards: dict[str, Path]) -> dict[str, int]:
    """Remove (in place) from each shard's splits every text an earlier shard holds; rows dropped per shard."""
    seen: set[str] = set()
    dropped: dict[str, int] = {}
    for name, folder in shards.items():
        frames = {split: pd.read_parquet(folder / f"{split}.parquet") for split in SPLITS}
        dropped[name] = 0
        for split, frame in frames.items():
            keep = ~frame["text"].map(text_key).isin(seen)
            dropped[name] += int((~keep).sum())
            if not keep.all():
                frame[keep].reset_index(drop=True).to_parquet(folder / f"{split}.parquet", index=False)
        for frame in frames.values():
            seen |= set(frame["text"].map(text_key))
    return dropped


def pooled_test(shards: dict[str, Path], out_dir: Path) -> Path:
    """Every shard's test split in one file, each row keeping its client (`client` column), with a data card
    (the first shard's labels) so that the evaluate component scores it as any prepared folder's test split."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = [
        pd.read_parquet(folder / "test.parquet")[["text", "label"]].assign(client=n) for n, folder in shards.items()
    ]
    pooled = pd.concat(frames, ignore_index=True)
    pooled.to_parquet(out_dir / "test.parquet", index=False)
    labels = json.loads((next(iter(shards.values())) / "data_card.json").read_text())["labels"]
    card = {
        "source": "pooled:" + ",".join(shards),
        "sha256": hashlib.sha256(pooled.to_csv().encode()).hexdigest(),
        "labels": labels,
        "rows": {"test": len(pooled)},
    }
    (out_dir / "data_card.json").write_text(json.dumps(card, indent=2))
    return out_dir / "test.parquet"


def union_prepared(shards: dict[str, Path], out_dir: Path, labels: list[str]) -> Path:
    """The shards as one prepared folder (train and validation: the union of theirs; test: the pooled test
    split), what the export and quantize components read (parity checks, calibration, timing)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        frames = [pd.read_parquet(folder / f"{split}.parquet")[["text", "label"]] for folder in shards.values()]
        pd.concat(frames, ignore_index=True).to_parquet(out_dir / f"{split}.parquet", index=False)
    digest = hashlib.sha256("".join(shard_sha256(f) for f in shards.values()).encode()).hexdigest()
    card = {
        "source": "federated:" + ",".join(shards),
        "sha256": digest,
        "labels": list(labels),
        "rows": {split: len(pd.read_parquet(out_dir / f"{split}.parquet")) for split in SPLITS},
    }
    (out_dir / "data_card.json").write_text(json.dumps(card, indent=2))
    return out_dir


def shard_sha256(shard: Path) -> str:
    """sha256 of a shard's content: each split's (text, label) rows in order, splits in SPLITS order."""
    digest = hashlib.sha256()
    for split in SPLITS:
        frame = pd.read_parquet(Path(shard) / f"{split}.parquet")[["text", "label"]]
        digest.update(split.encode() + b"\0")
        for text, label in frame.itertuples(index=False):
            digest.update(f"{text}\t{label}\n".encode())
    return digest.hexdigest()


def build(
    data: DataConfig,
    clients: list[str],
    max_rows: int | None,
    out_dir: Path,
    cache_dir: Path,
    root: Path,
    tracker: Tracker | None = None,
) -> dict[str, Path]:
    """Prepare one shard per client (`source_of`), drop shared sentences, write the pooled test split and a
    `shards.json` (each shard's rows, content hash and source); returns {client: shard folder}."""
    from components.classification import ingest

    tracker = tracker or NullTracker()
    shards: dict[str, Path] = {}
    for name in clients:
        cfg = data.model_copy(update={"source": source_of(name), "transfer": False, "max_rows": max_rows})
        ingest.run(cfg, out_dir / name, PrefixedTracker(tracker, f"{name}."), cache_dir=cache_dir, root=root)
        shards[name] = out_dir / name
    dropped = drop_shared(shards)
    pooled_test(shards, out_dir / POOLED)
    summary = {
        name: {
            "source": source_of(name),
            "sha256": shard_sha256(folder),
            "rows": {split: len(pd.read_parquet(folder / f"{split}.parquet")) for split in SPLITS},
            "dropped_shared": dropped[name],
        }
        for name, folder in shards.items()
    }
    (out_dir / "shards.json").write_text(json.dumps(summary, indent=2))
    return shards
