import json

import pandas as pd
import pytest

from components.config import DataConfig, MultitaskConfig
from components.kit.data import DataError
from components.kit.text import text_key
from components.kit.tracking import NullTracker
from components.multitask import ingest
from tests.components.kit.test_data import fake_sdist

TASKS = {
    "topic": {"column": "topic", "labels": ["sport", "tech"]},
    "tone": {"column": "tone"},
}


def user_file(tmp_path, rows: int = 60, **columns) -> str:
    frame = pd.DataFrame(
        {
            "text": [f"sentence number {i}" for i in range(rows)],
            "topic": ["sport" if i % 2 else "tech" for i in range(rows)],
            "tone": [None if i % 3 == 0 else ("calm" if i % 4 else "angry") for i in range(rows)],
        }
    )
    for name, values in columns.items():
        frame[name] = values
    frame = frame[[c for c in frame.columns if frame[c] is not None]]
    frame.to_csv(tmp_path / "rows.csv", index=False)
    return "rows.csv"


def ingest_file(tmp_path, source: str, tasks=TASKS):
    out = tmp_path / "prepared"
    ingest.run(
        DataConfig(source=source),
        MultitaskConfig.model_validate({"tasks": tasks}).tasks,
        out,
        NullTracker(),
        cache_dir=tmp_path,
        root=tmp_path,
    )
    return out


def test_a_users_file_is_split_with_missing_labels_kept_as_nulls(tmp_path):
    out = ingest_file(tmp_path, user_file(tmp_path))
    card = json.loads((out / "data_card.json").read_text())
    assert card["tasks"] == {
        "topic": {"column": "topic", "labels": ["sport", "tech"]},
        "tone": {"column": "tone", "labels": ["angry", "calm"]},
    }
    splits = {name: pd.read_parquet(out / f"{name}.parquet") for name in ("train", "validation", "test")}
    assert sum(len(df) for df in splits.values()) == 60 and list(splits["train"].columns) == ["text", "topic", "tone"]
    assert splits["train"]["tone"].isna().any() and splits["train"]["topic"].notna().all()
    # Stratified on the first complete task: both topics in every split.
    assert all(set(df["topic"]) == {"sport", "tech"} for df in splits.values())
    keys = [set(df["text"].map(text_key)) for df in splits.values()]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])


@pytest.mark.parametrize(
    "columns, tasks, message",
    [
        ({}, TASKS | {"lang": {"column": "lang"}}, r"task lang \(column 'lang'\) is not in the data"),
        ({"topic": ["sport"] * 60}, TASKS, r"task topic \(column 'topic'\) has 1 class"),
        (
            {"topic": ["sport"] * 59 + ["cooking"]},
            TASKS,
            r"task topic \(column 'topic'\) holds 'cooking', outside its declared labels",
        ),
        (
            {"topic": [None] * 30 + ["tech", "sport"] * 15, "tone": [None] * 30 + ["calm", "angry"] * 15},
            TASKS,
            r"30 row\(s\) have no label for any task \(columns topic, tone\)",
        ),
    ],
    ids=["missing column", "one class", "label outside the set", "row without any label"],
)
def test_bad_task_data_is_refused_naming_the_task_and_column(tmp_path, columns, tasks, message):
    with pytest.raises(DataError, match=message):
        ingest_file(tmp_path, user_file(tmp_path, **columns), tasks)
    assert not (tmp_path / "prepared").exists()  # nothing written


def test_the_archive_gives_three_labels_per_sentence(tmp_path):
    archive = fake_sdist(
        tmp_path / "vader.tar.gz",
        tmp_path / "marker",
        {
            "movieReviewSnippets": "1\t2.5\tA fine film\n2\t-2.0\tA dull film\n3\t0.1\tA film\n",
            "tweets": "1\t0.0\tsunny day\n",
            "nytEditorialSnippets": "1\t-0.6\tthe policy failed\n",
            "amazonReviewSnippets": "5\t0.5\tworks\n",
        },
    )
    rows = ingest.label_vader(archive, threshold=0.5).set_index("text")
    assert rows.loc["A fine film"].tolist() == ["positive", "opinionated", "movie"]
    assert pd.isna(rows.loc["A film", "sentiment"]) and rows.loc["A film"].tolist()[1:] == ["neutral", "movie"]
    assert rows.loc["sunny day", "source"] == "tweet" and rows.loc["the policy failed", "sentiment"] == "negative"
    assert rows.loc["works"].tolist() == ["positive", "opinionated", "product"]


def test_tasks_from_several_files_are_joined_on_the_text(tmp_path):
    texts = [f"sentence number {i}" for i in range(60)]
    pd.DataFrame({"text": texts, "topic": ["sport" if i % 2 else "tech" for i in range(60)]}).to_csv(
        tmp_path / "topics.csv", index=False
    )
    # the tone file labels the same sentences (one in different case) plus ten of its own
    tone_texts = [t.upper() if i == 0 else t for i, t in enumerate(texts[:40])] + [f"other line {i}" for i in range(10)]
    pd.DataFrame({"text": tone_texts, "tone": ["calm" if i % 2 else "angry" for i in range(50)]}).to_csv(
        tmp_path / "tones.csv", index=False
    )
    tasks = {"topic": {"column": "topic"}, "tone": {"column": "tone", "source": "tones.csv"}}
    out = ingest_file(tmp_path, "topics.csv", tasks)
    rows = pd.concat([pd.read_parquet(out / f"{s}.parquet") for s in ("train", "validation", "test")])
    assert len(rows) == 70  # 60 sentences, 10 more of the tone file; the upper-cased copy joined its sentence
    both = rows[rows["topic"].notna() & rows["tone"].notna()]
    assert len(both) == 40 and rows["tone"].isna().sum() == 20 and rows["topic"].isna().sum() == 10
    card = json.loads((out / "data_card.json").read_text())
    assert card["source"] == "topics.csv + tones.csv" and len(card["sha256"]) == 64


def test_a_tasks_own_file_without_its_column_is_refused_naming_the_task(tmp_path):
    user_file(tmp_path)
    pd.DataFrame({"text": ["a", "b"], "mood": ["x", "y"]}).to_csv(tmp_path / "tones.csv", index=False)
    tasks = {"topic": {"column": "topic"}, "tone": {"column": "tone", "source": "tones.csv"}}
    with pytest.raises(DataError, match="task tone \\(column 'tone'\\)"):
        ingest_file(tmp_path, "rows.csv", tasks)
