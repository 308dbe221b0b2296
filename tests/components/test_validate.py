import json

import pandas as pd
import pytest

from components import validate
from components.config import ValidateConfig
from tests.conftest import make_frame, write_prepared


class RecordingTracker:
    def __init__(self):
        self.metrics, self.artifacts = {}, []

    def log_params(self, params):
        pass

    def log_metrics(self, metrics, step=None):
        self.metrics.update(metrics)

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append(path)

    def set_tags(self, tags):
        pass


def clean_frames() -> dict[str, pd.DataFrame]:
    """train 48 / validation 16 / test 16, balanced, no overlap (as the tiny_prepared fixture)."""
    return {"train": make_frame(24, 0), "validation": make_frame(8, 100), "test": make_frame(8, 200)}


def expect_failure(tmp_path, frames, cfg=None, **kwargs) -> tuple[validate.ValidationFailed, dict]:
    """Run the stage on `frames`; it must raise. Returns the error and the report it wrote."""
    prepared = write_prepared(tmp_path / "prepared", frames)
    tracker = RecordingTracker()
    with pytest.raises(validate.ValidationFailed) as caught:
        validate.run(cfg or ValidateConfig(), prepared, tmp_path / "out", tracker, **kwargs)
    error = caught.value
    assert error.report_path == tmp_path / "out" / "validation.json"
    assert tracker.artifacts == [error.report_path]  # written and logged before raising
    assert tracker.metrics["checks_failed"] == len(error.failures) > 0
    report = json.loads(error.report_path.read_text())
    assert report["success"] is False and report["failures"] == error.failures
    return error, report


def failures_of(report: dict, check: str, split: str | None = None) -> list[dict]:
    return [f for f in report["failures"] if f["check"] == check and split in (None, f["split"])]


def message_lines(error) -> list[str]:
    return str(error).splitlines()


def test_clean_dataset_passes(tiny_prepared, tmp_path):
    tracker = RecordingTracker()
    result = validate.run(ValidateConfig(), tiny_prepared, tmp_path, tracker)
    report = json.loads(result.outputs["report"].read_text())
    assert report["success"] is True and report["failures"] == [] and report["skipped"] == []
    assert result.metrics["checks_failed"] == 0 and result.metrics["checks_total"] == report["checks_total"] > 20
    assert tracker.artifacts == [tmp_path / "validation.json"] and tracker.metrics == result.metrics
    # The GX results per split are kept, each expectation tagged with the check it implements.
    checks = {entry["check"] for entry in report["gx"]["test"]["rows"]["expectations"]}
    assert {"schema", "not_null", "text_length", "label_in_set", "duplicate_rate", "train_overlap"} <= checks
    assert report["gx"]["train"]["class_share"]["success"] is True


def test_labels_outside_the_set_fail(tmp_path):
    frames = clean_frames()
    frames["train"].loc[5, "label"] = "neutral"
    error, report = expect_failure(tmp_path, frames)
    [failure] = failures_of(report, "label_in_set")
    assert failure["split"] == "train" and failure["column"] == "label" and failure["unexpected_count"] == 1
    assert failure["expectation_type"] == "expect_column_values_to_be_in_set"
    assert failure["examples"] == [{"row": 5, "text": frames["train"].loc[5, "text"], "label": "neutral"}]
    lines = message_lines(error)
    assert lines[0] == f"data validation failed: 1 of {report['checks_total']} checks"
    assert lines[1].startswith("  train: label_in_set on column 'label'")
    assert lines[2].strip().startswith("row 5:") and "label='neutral'" in lines[2]


def test_empty_and_whitespace_texts_fail_length(tmp_path):
    frames = clean_frames()
    frames["validation"].loc[3, "text"] = ""
    frames["test"].loc[7, "text"] = "  \t "
    error, report = expect_failure(tmp_path, frames)
    by_split = {f["split"]: f for f in failures_of(report, "text_length")}
    assert set(by_split) == {"validation", "test"}
    assert by_split["validation"]["examples"][0] == {
        "row": 3,
        "text": "",
        "label": frames["validation"].loc[3, "label"],
    }
    assert by_split["test"]["examples"][0]["text"] == "  \t "
    assert "validation: text_length on column 'text'" in str(error)
    assert "row 7: text='  \\t '" in str(error)


def test_null_texts_fail(tmp_path):
    frames = clean_frames()
    frames["train"].loc[2, "text"] = None
    error, report = expect_failure(tmp_path, frames)
    [failure] = failures_of(report, "not_null")
    assert (failure["split"], failure["column"], failure["unexpected_count"]) == ("train", "text", 1)
    assert failure["examples"][0]["row"] == 2 and failure["examples"][0]["text"] is None


def test_missing_label_column_is_the_headline_and_skips_label_checks(tmp_path):
    frames = clean_frames()
    frames["train"] = frames["train"].drop(columns=["label"])
    error, report = expect_failure(tmp_path, frames)
    assert report["failures"][0]["check"] == "schema"
    assert (report["failures"][0]["split"], report["failures"][0]["column"]) == ("train", "label")
    assert report["failures"][0]["expectation_type"] == "expect_column_to_exist"
    skipped = {(s["split"], s["check"]) for s in report["skipped"]}
    assert {
        ("train", "not_null"),
        ("train", "label_in_set"),
        ("train", "distinct_labels"),
        ("train", "class_share"),
    } <= skipped
    assert all(s["reason"] == "column 'label' is missing" for s in report["skipped"])
    lines = message_lines(error)
    assert lines[1].startswith("  train: schema on column 'label'") and "column is missing" in lines[1]
    assert "columns_present='text'" in lines[2]
    assert any("skipped" in line for line in lines)


def test_missing_text_column_skips_text_checks(tmp_path):
    frames = clean_frames()
    frames["test"] = frames["test"].drop(columns=["text"])
    error, report = expect_failure(tmp_path, frames)
    assert [(f["check"], f["split"], f["column"]) for f in report["failures"]] == [("schema", "test", "text")]
    skipped = {s["check"] for s in report["skipped"] if s["split"] == "test"}
    assert skipped == {"text_is_string", "not_null", "text_length", "duplicate_rate", "train_overlap"}
    assert message_lines(error)[1].startswith("  test: schema on column 'text'")


def test_missing_text_in_train_skips_overlap_everywhere(tmp_path):
    frames = clean_frames()
    frames["train"] = frames["train"].drop(columns=["text"])
    _, report = expect_failure(tmp_path, frames)
    overlap = [s for s in report["skipped"] if s["check"] == "train_overlap"]
    assert {s["split"] for s in overlap} == {"validation", "test"}
    assert overlap[0]["reason"] == "column 'text' is missing in train"


def test_train_test_overlap_fails(tmp_path):
    frames = clean_frames()
    leaked = frames["train"].loc[[4, 9]].reset_index(drop=True)
    leaked.loc[1, "text"] = "  " + leaked.loc[1, "text"].upper()  # case and spacing do not hide a leak
    frames["test"] = pd.concat([frames["test"], leaked], ignore_index=True)
    error, report = expect_failure(tmp_path, frames)
    [failure] = failures_of(report, "train_overlap")
    assert failure["split"] == "test" and failure["unexpected_count"] == 2
    assert [e["row"] for e in failure["examples"]] == [16, 17]
    assert failure["examples"][0]["text"] == frames["train"].loc[4, "text"]
    assert "test: train_overlap on column 'text'" in str(error)


def test_class_under_minimum_share_fails(tmp_path):
    frames = clean_frames()
    train = frames["train"]
    frames["train"] = pd.concat(
        [train[train["label"] == "positive"], train[train["label"] == "negative"].head(2)], ignore_index=True
    )  # 24 positive, 2 negative: share 0.077
    error, report = expect_failure(tmp_path, frames)
    [failure] = failures_of(report, "class_share")
    assert failure["split"] == "train" and failure["column"] == "label"
    assert failure["examples"] == [{"label": "negative", "count": 2, "share": round(2 / 26, 4)}]
    assert "train: class_share on column 'label'" in str(error) and "label='negative' count=2" in str(error)


def test_every_expected_label_must_appear(tmp_path):
    _, report = expect_failure(tmp_path, clean_frames(), expected_labels=["negative", "neutral", "positive"])
    failures = failures_of(report, "class_share")
    assert {f["split"] for f in failures} == {"train", "validation", "test"}
    assert all(f["examples"] == [{"label": "neutral", "count": 0, "share": 0.0}] for f in failures)
    assert report["expected_labels"] == ["negative", "neutral", "positive"]


def test_heavy_duplication_fails(tmp_path):
    frames = clean_frames()
    frames["validation"].loc[0:5, "text"] = "the same sentence again"
    error, report = expect_failure(tmp_path, frames)
    [failure] = failures_of(report, "duplicate_rate")
    assert failure["split"] == "validation" and failure["unexpected_count"] == 5
    assert failure["examples"] == [{"text": "the same sentence again", "count": 6}]
    assert "validation: duplicate_rate on column 'text'" in str(error)


def test_single_label_train_and_non_string_text_fail(tmp_path):
    frames = clean_frames()
    frames["train"]["label"] = "positive"
    frames["test"]["text"] = range(len(frames["test"]))
    _, report = expect_failure(tmp_path, frames, cfg=ValidateConfig(min_class_share=0.01))
    [distinct] = failures_of(report, "distinct_labels")
    assert distinct["split"] == "train" and distinct["observed_value"] == 1
    [typed] = failures_of(report, "text_is_string")
    assert typed["split"] == "test" and typed["examples"][0] == {"row": 0, "text": 0, "label": "positive"}


def test_long_example_texts_are_truncated(tmp_path):
    frames = clean_frames()
    frames["train"].loc[0, "text"] = "x" * 500
    _, report = expect_failure(tmp_path, frames, cfg=ValidateConfig(max_chars=100))
    [failure] = failures_of(report, "text_length")
    assert len(failure["examples"][0]["text"]) == validate.EXAMPLE_CHARS
    assert failure["examples"][0]["text"].endswith("...")


def test_labels_fall_back_to_train_when_the_card_has_none(tmp_path):
    frames = clean_frames()
    prepared = write_prepared(tmp_path / "prepared", frames, labels=())
    result = validate.run(ValidateConfig(), prepared, tmp_path / "out", RecordingTracker())
    assert result.info["expected_labels"] == ["negative", "positive"]


def test_class_share_frame_counts_absent_labels_as_zero():
    frame = validate.class_share_frame(pd.Series(["a", "a", "b", None]), ["a", "b", "c"])
    assert frame.to_dict("records") == [
        {"label": "a", "count": 2, "share": 0.5},
        {"label": "b", "count": 1, "share": 0.25},
        {"label": "c", "count": 0, "share": 0.0},
    ]


def test_a_text_only_corpus_is_checked_without_label_checks(tmp_path):
    import pandas as pd

    from components.config import ValidateConfig
    from components.kit.tracking import NullTracker
    from components.validate import ValidationFailed, run

    texts = [f"sentence number {i} about a film" for i in range(60)]
    for name, part in (("train", texts[:40]), ("validation", texts[40:50]), ("test", texts[50:])):
        pd.DataFrame({"text": part}).to_parquet(tmp_path / f"{name}.parquet")
    result = run(ValidateConfig(), tmp_path, tmp_path / "out", NullTracker(), text_only=True)
    assert result.metrics["checks_failed"] == 0
    assert not [s for s in result.info["skipped"] if s["column"] == "label"]
    pd.DataFrame({"text": texts[:9] + [texts[0]]}).to_parquet(tmp_path / "test.parquet")  # a train text in test
    with pytest.raises(ValidationFailed, match="train_overlap"):
        run(ValidateConfig(), tmp_path, tmp_path / "out", NullTracker(), text_only=True)


# --- a multitask split: label checks per task, on the rows that have its label ----------------------------

TASKS = {
    "sentiment": {"column": "sentiment", "labels": ["negative", "positive"]},
    "source": {"column": "source", "labels": ["movie", "tweet"]},
}


def multitask_frames(rows: int = 24, offset: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "text": [f"multitask sentence {offset + i}" for i in range(rows)],
            "sentiment": [None if i % 3 == 0 else ("positive" if i % 2 else "negative") for i in range(rows)],
            "source": ["movie" if i % 2 else "tweet" for i in range(rows)],
        }
    )


def write_multitask(tmp_path, frames: dict[str, pd.DataFrame]):
    prepared = write_prepared(tmp_path / "prepared", frames)
    card = json.loads((prepared / "data_card.json").read_text())
    (prepared / "data_card.json").write_text(json.dumps(card | {"labels": [], "tasks": TASKS}))
    return prepared


def test_multitask_splits_check_each_task_on_its_labelled_rows(tmp_path):
    frames = {"train": multitask_frames(48), "validation": multitask_frames(16, 100), "test": multitask_frames(16, 200)}
    result = validate.run(ValidateConfig(), write_multitask(tmp_path, frames), tmp_path / "out", RecordingTracker())
    report = json.loads(result.outputs["report"].read_text())
    assert report["success"] and not report["skipped"]  # missing sentiment labels are not null failures
    assert set(report["gx"]["train"]["tasks"]) == {"has_a_label", "sentiment", "source"}

    bad = dict(frames)
    bad["train"] = frames["train"].copy()
    bad["train"].loc[3, "source"] = "editorial"  # outside the declared set
    bad["train"].loc[[0, 6], ["sentiment", "source"]] = None  # rows with no label at all
    with pytest.raises(validate.ValidationFailed) as caught:
        validate.run(ValidateConfig(), write_multitask(tmp_path, bad), tmp_path / "out", RecordingTracker())
    failed = {(f["check"], f["column"]): f for f in caught.value.failures}
    assert failed[("has_a_label", "sentiment, source")]["unexpected_count"] == 2
    assert failed[("label_in_set", "source")]["examples"][0] == {
        "row": 3,
        "text": "multitask sentence 3",
        "label": "editorial",
    }
    assert "train: has_a_label on column 'sentiment, source'" in str(caught.value)
