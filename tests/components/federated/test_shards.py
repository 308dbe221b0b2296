"""The demonstration's shards from a vaderSentiment-shaped archive: one per source, prepared as the ingest
stage prepares it, no sentence in two shards, the pooled test split naming each row's client, content
hashes that change with the content; and the union folder the export stage reads."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from components.config import DataConfig
from components.federated import shards
from components.kit import data
from components.kit.hashing import file_sha256
from tests.components.kit.test_data import fake_sdist

WORDS = {
    "movieReviewSnippets": ("film", "plot"),
    "amazonReviewSnippets": ("charger", "screen"),
    "tweets": ("sunny day", "traffic"),
    "nytEditorialSnippets": ("the senate", "the budget"),
}


def ratings(member: str, n: int = 20) -> str:
    good, bad = WORDS[member]
    lines = [f"{i}\t2.0\ta great {good} number {i}" for i in range(n)]
    lines += [f"{n + i}\t-2.0\ta terrible {bad} number {i}" for i in range(n)]
    if member == "tweets":  # a sentence the movie file holds too: it stays with the movie client
        lines.append("999\t2.0\ta great film number 3")
    return "\n".join(lines) + "\n"


@pytest.fixture
def built(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    archive = fake_sdist(raw / data.VADER_ARCHIVE, tmp_path / "ran", {m: ratings(m) for m in WORDS})
    monkeypatch.setattr(data, "VADER_SHA256", file_sha256(archive))
    out = tmp_path / "shards"
    made = shards.build(DataConfig(), ["movie", "amazon", "tweets", "nyt"], None, out, raw, tmp_path)
    return made, out


def test_one_shard_per_source_in_the_ingest_layout(built):
    made, out = built
    assert list(made) == ["movie", "amazon", "tweets", "nyt"]
    for name, folder in made.items():
        assert {p.name for p in folder.iterdir()} >= {"train.parquet", "validation.parquet", "test.parquet"}
        card = json.loads((folder / "data_card.json").read_text())
        assert card["labels"] == ["negative", "positive"] and card["source"].endswith(
            data.VADER_MEMBERS[name] if name != "movie" else "movieReviewSnippets"
        )
    summary = json.loads((out / "shards.json").read_text())
    assert summary["tweets"]["dropped_shared"] == 1 and summary["movie"]["dropped_shared"] == 0
    assert len({s["sha256"] for s in summary.values()}) == 4


def test_no_sentence_is_in_two_shards_and_the_pooled_split_names_clients(built):
    made, out = built
    texts = [
        set(pd.concat([pd.read_parquet(f / f"{s}.parquet") for s in ("train", "validation", "test")])["text"])
        for f in made.values()
    ]
    assert sum(len(t) for t in texts) == len(set().union(*texts))
    pooled = pd.read_parquet(out / shards.POOLED / "test.parquet")
    assert set(pooled["client"]) == set(made)
    assert len(pooled) == sum(len(pd.read_parquet(f / "test.parquet")) for f in made.values())
    assert json.loads((out / shards.POOLED / "data_card.json").read_text())["labels"] == ["negative", "positive"]


def test_a_shard_hash_follows_its_content(built, tmp_path):
    made, _ = built
    before = shards.shard_sha256(made["nyt"])
    test = pd.read_parquet(made["nyt"] / "test.parquet")
    test.iloc[:-1].to_parquet(made["nyt"] / "test.parquet", index=False)
    assert shards.shard_sha256(made["nyt"]) != before
    union = shards.union_prepared(made, tmp_path / "union", ["negative", "positive"])
    rows = json.loads((union / "data_card.json").read_text())["rows"]
    assert rows["train"] == sum(len(pd.read_parquet(f / "train.parquet")) for f in made.values())
