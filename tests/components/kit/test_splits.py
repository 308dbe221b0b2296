import pandas as pd

from components.config import SPLITS
from components.kit import splits
from tests.conftest import make_frame


def test_split_is_deterministic_stratified_and_disjoint():
    frame = make_frame(100)
    a = splits.stratified_split(frame, (0.8, 0.1, 0.1), seed=3)
    b = splits.stratified_split(frame, (0.8, 0.1, 0.1), seed=3)
    c = splits.stratified_split(frame, (0.8, 0.1, 0.1), seed=4)
    assert all(a[k].equals(b[k]) for k in a)
    assert not a["test"].equals(c["test"])
    assert [len(a[k]) for k in SPLITS] == [160, 20, 20]
    assert (a["test"]["label"].value_counts() == 10).all()
    texts = [set(a[k]["text"]) for k in SPLITS]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])


def test_max_rows_caps_while_keeping_balance():
    parts = splits.stratified_split(make_frame(100), (0.8, 0.1, 0.1), seed=0, max_rows=50)
    total = sum(len(p) for p in parts.values())
    assert total == 50
    assert parts["train"]["label"].value_counts().nunique() == 1


def test_deduplicate_counts_exact_normalised_and_conflicting_rows():
    frame = pd.DataFrame(
        {
            "text": [
                "Great film",
                "great  FILM",
                "Great film",
                "Bad plot",
                " bad PLOT ",
                "Fine",
                None,
                None,
                "",
                " ",
                " ",
            ],
            "label": ["pos", "pos", "pos", "neg", "pos", "pos", "neg", "neg", "pos", "neg", "neg"],
        }
    )
    kept, dropped = splits.deduplicate(frame)
    # Empty texts stay (but for exact copies) for the validate stage to count and refuse.
    assert kept["text"].fillna("<null>").tolist() == ["Great film", "Fine", "<null>", "", " "]
    assert dropped == {"exact": 3, "normalised": 1, "conflicting_labels": 2}


def test_conflicts_in_any_label_column_drop_the_text():
    frame = pd.DataFrame(
        {
            "text": ["a b", "A  b", "c", "c", "d"],
            "sentiment": ["pos", "pos", "neg", None, "pos"],
            "source": ["movie", "tweet", "nyt", "nyt", "nyt"],
        }
    )
    kept, dropped = splits.deduplicate(frame, label_columns=("sentiment", "source"))
    # "a b" carries two sources: dropped in both copies; "c" once without a label is not a conflict.
    assert kept["text"].tolist() == ["c", "d"] and dropped["conflicting_labels"] == 2


def test_split_stratifies_on_the_named_column():
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(40)], "source": ["a"] * 30 + ["b"] * 10})
    parts = splits.stratified_split(frame, (0.5, 0.25, 0.25), seed=0, by="source")
    # Each source is split on its own: a 15/8/7 (round half to even), b 5/2/3.
    assert [parts[k]["source"].value_counts().to_dict() for k in SPLITS] == [
        {"a": 15, "b": 5},
        {"a": 8, "b": 2},
        {"a": 7, "b": 3},
    ]
