import json

import pandas as pd
import pytest

from components import validate
from components.classification import ingest
from components.config import SPLITS, DataConfig
from components.kit import data
from components.kit.data import DataError
from components.kit.hashing import file_sha256
from components.kit.text import text_key
from components.kit.tracking import NullTracker
from tests.components.kit.test_data import fake_index  # noqa: F401 - the fake package index fixture
from tests.conftest import make_frame


def test_label_ratings_thresholds_and_drops_neutral():
    frame = pd.DataFrame({"rating": [1.2, 0.5, 0.49, -0.49, -0.5, -3.0], "text": list("abcdef")})
    out = ingest.label_ratings(frame, 0.5)
    assert out["text"].tolist() == ["a", "b", "e", "f"]
    assert out["label"].tolist() == ["positive", "positive", "negative", "negative"]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_run_reads_user_files_and_writes_card(tmp_path, suffix):
    frame = pd.concat([make_frame(30), make_frame(2)])  # 4 exact duplicates
    frame["label"] = frame["label"].map({"positive": "pos", "negative": "neg"})
    src = tmp_path / f"data{suffix}"
    {
        ".csv": lambda p: frame.to_csv(p, index=False),
        ".jsonl": lambda p: frame.to_json(p, orient="records", lines=True),
        ".parquet": lambda p: frame.to_parquet(p, index=False),
    }[suffix](src)
    result = ingest.run(DataConfig(source=str(src)), tmp_path / "out", NullTracker(), root=tmp_path)
    card = json.loads((tmp_path / "out" / "data_card.json").read_text())
    assert card["labels"] == ["neg", "pos"]
    assert card["duplicates_dropped"] == {"exact": 4, "normalised": 0}
    assert card["conflicting_labels_dropped"] == 0
    assert sum(card["rows"].values()) == 60 == sum(result.metrics.values())
    assert card["sha256"] == file_sha256(src)
    assert pd.read_parquet(tmp_path / "out" / "train.parquet").columns.tolist() == ["text", "label"]


# --- the built-in archive: verified before it is opened, never run ---------------------------------


def test_archive_matching_the_pin_is_read_without_running_it(fake_index, tmp_path, monkeypatch):  # noqa: F811
    index, archive, marker = fake_index
    monkeypatch.setattr(data, "VADER_SHA256", file_sha256(archive))
    cache = tmp_path / "raw"
    fetched = data.fetch_vader_archive(cache, indexes=("http://127.0.0.1:9/nothing-here", index))
    assert [p.name for p in cache.iterdir()] == [data.VADER_ARCHIVE] and fetched == cache / data.VADER_ARCHIVE
    assert data.read_vader_ratings(fetched, "movieReviewSnippets")["text"].tolist() == [
        "A fine   FILM",
        "A dull film",
        "A film",
    ]
    assert not marker.exists()
    # Transfer sentences are excluded by the same key the splits are compared by.
    exclude = {text_key("A fine   FILM"), text_key("A dull film")}
    assert ingest.transfer_set(fetched, 0.5, exclude)["text"].tolist() == ["A film", "sunny", "broke"]
    # Another built-in source as the labelled data: the movie snippets join the transfer set, all of them.
    assert ingest.transfer_set(fetched, 0.5, set(), "amazon")["text"].tolist() == [
        "A fine   FILM",
        "A dull film",
        "A film",
        "sunny",
    ]
    assert set(ingest.BUILTIN_SOURCES) == {"vader-movie", "vader-tweets", "vader-nyt", "vader-amazon"}


def test_a_split_column_is_kept_and_a_bad_one_refused(tmp_path):
    frame = make_frame(10).assign(split=["train"] * 12 + ["validation"] * 4 + ["test"] * 4)
    frame.to_csv(tmp_path / "union.csv", index=False)
    ingest.run(DataConfig(source="union.csv"), tmp_path / "out", NullTracker(), root=tmp_path)
    for name, rows in (("train", 12), ("validation", 4), ("test", 4)):
        split = pd.read_parquet(tmp_path / "out" / f"{name}.parquet")
        assert split.columns.tolist() == ["text", "label"]
        assert split["text"].tolist() == frame[frame["split"] == name]["text"].tolist() and len(split) == rows
    frame.loc[3, "split"] = "holdout"
    frame.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match="column split holds 'holdout'"):
        ingest.run(DataConfig(source="bad.csv"), tmp_path / "out2", NullTracker(), root=tmp_path)


# --- de-duplication in the form validation compares ------------------------------------------------


def test_ingest_output_passes_validations_overlap_check(tmp_path):
    variants = pd.concat(
        [
            pd.DataFrame(
                {
                    "text": [f"Great film{s}", f"great  FILM{s}", f"GREAT FILM {s}", f"Bad plot{s}", f"bad plot{s}"],
                    "label": ["positive"] * 3 + ["negative", "positive"],
                }
            )
            for s in ("", " x", " y", " z")
        ]
    )
    shouted = make_frame(30).assign(text=lambda f: f["text"].str.upper())  # 60 case-only duplicates
    frame = pd.concat([make_frame(30), variants, shouted], ignore_index=True)
    src = tmp_path / "data.csv"
    frame.to_csv(src, index=False)
    ingest.run(DataConfig(source=str(src)), tmp_path / "out", NullTracker(), root=tmp_path)
    splits = {name: pd.read_parquet(tmp_path / "out" / f"{name}.parquet") for name in SPLITS}
    train_keys = set(splits["train"]["text"].map(validate.text_key))
    for name in ("validation", "test"):
        assert not validate.rows_frame(splits[name], train_keys)["in_train"].any(), name
    keys = [df["text"].map(text_key).tolist() for df in splits.values()]
    assert sum(map(len, keys)) == len(set().union(*keys)) == 60 + 4  # no key twice, in a split or across
    assert not any("bad plot" in key for key in set().union(*keys))
    card = json.loads((tmp_path / "out" / "data_card.json").read_text())
    assert card["duplicates_dropped"] == {"exact": 0, "normalised": 60 + 8}
    assert card["conflicting_labels_dropped"] == 8  # "bad plot" with two labels, in each of 4 variants
