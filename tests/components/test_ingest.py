import json

import pandas as pd
import pytest

from components import ingest
from components.config import DataConfig
from components.tracking import NullTracker
from tests.conftest import make_frame


def test_label_ratings_thresholds_and_drops_neutral():
    frame = pd.DataFrame({"rating": [1.2, 0.5, 0.49, -0.49, -0.5, -3.0], "text": list("abcdef")})
    out = ingest.label_ratings(frame, 0.5)
    assert out["text"].tolist() == ["a", "b", "e", "f"]
    assert out["label"].tolist() == ["positive", "positive", "negative", "negative"]


def test_split_is_deterministic_stratified_and_disjoint():
    frame = make_frame(100)
    a = ingest.stratified_split(frame, (0.8, 0.1, 0.1), seed=3)
    b = ingest.stratified_split(frame, (0.8, 0.1, 0.1), seed=3)
    c = ingest.stratified_split(frame, (0.8, 0.1, 0.1), seed=4)
    assert all(a[k].equals(b[k]) for k in a)
    assert not a["test"].equals(c["test"])
    assert [len(a[k]) for k in ingest.SPLITS] == [160, 20, 20]
    assert (a["test"]["label"].value_counts() == 10).all()
    texts = [set(a[k]["text"]) for k in ingest.SPLITS]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])


def test_max_rows_caps_while_keeping_balance():
    parts = ingest.stratified_split(make_frame(100), (0.8, 0.1, 0.1), seed=0, max_rows=50)
    total = sum(len(p) for p in parts.values())
    assert total == 50
    assert parts["train"]["label"].value_counts().nunique() == 1


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_run_reads_user_files_and_writes_card(tmp_path, suffix):
    frame = pd.concat([make_frame(30), make_frame(2)])  # 4 exact duplicates
    frame["label"] = frame["label"].map({"positive": "pos", "negative": "neg"})
    src = tmp_path / f"data{suffix}"
    {".csv": lambda p: frame.to_csv(p, index=False),
     ".jsonl": lambda p: frame.to_json(p, orient="records", lines=True),
     ".parquet": lambda p: frame.to_parquet(p, index=False)}[suffix](src)
    result = ingest.run(DataConfig(source=str(src)), tmp_path / "out", NullTracker(), root=tmp_path)
    card = json.loads((tmp_path / "out" / "data_card.json").read_text())
    assert card["labels"] == ["neg", "pos"]
    assert card["duplicates_dropped"] == 4
    assert sum(card["rows"].values()) == 60 == sum(result.metrics.values())
    assert card["sha256"] == ingest.sha256_file(src)
    assert pd.read_parquet(tmp_path / "out" / "train.parquet").columns.tolist() == ["text", "label"]


def test_csv_with_quoted_newlines_and_delimiters_is_parsed(tmp_path):
    src = tmp_path / "d.csv"
    src.write_text('text,label\n"a line, with comma\nand newline",pos\n"plain",neg\n')
    frame = ingest.read_table(src)
    assert frame["text"].tolist() == ["a line, with comma\nand newline", "plain"]


def test_missing_file_and_unknown_format_say_so(tmp_path):
    with pytest.raises(ingest.DataError, match="does not exist"):
        ingest.read_table(tmp_path / "nope.csv")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ingest.DataError, match="unsupported data file"):
        ingest.read_table(tmp_path / "x.txt")
