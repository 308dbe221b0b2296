"""The update component on the tiny teacher: the warm start a full run leaves, one update with replay and
distillation (new words restored into the trimmed student, the next warm start complete), the naive
ablation, and the refusals (a label the model does not know, a batch name already taken)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from components.classification import trim, update
from components.config import IncrementalConfig
from components.kit import batches
from components.kit.budget import AccuracyBudget, accuracy_budget
from components.kit.data import DataError
from components.kit.grow import Growth
from components.kit.interpolation import choose_share
from components.kit.modeling import predict_logits
from components.kit.replay import stored_logits
from components.kit.tracking import NullTracker
from tests.conftest import make_frame, write_prepared

NEW_POS = ["the battery lasts forever", "a crisp bright screen", "worth every penny"]
NEW_NEG = ["the charger broke in a day", "the hinge wobbles", "support never answered"]
CFG = IncrementalConfig(teacher_epochs=1, student_epochs=1, batch_size=8, replay_size=20, teacher_lr=1e-3)


def gadgets(n: int, offset: int = 0) -> pd.DataFrame:
    rows = []
    for i in range(n):
        rows += [
            (f"{NEW_POS[i % 3]} unit {offset + i}", "positive"),
            (f"{NEW_NEG[i % 3]} unit {offset + i}", "negative"),
        ]
    return pd.DataFrame(rows, columns=["text", "label"])


@pytest.fixture(scope="module")
def warm(tiny_teacher_dir, tiny_prepared, tmp_path_factory):
    """The warm start of a full run: the tiny teacher, a trimmed student, the fixture data as batch `reviews`."""
    root = tmp_path_factory.mktemp("warm")
    texts = pd.concat([pd.read_parquet(tiny_prepared / f"{s}.parquet") for s in ("train", "validation")])["text"]
    trim.trim(tiny_teacher_dir, texts.tolist(), root / "trimmed", max_length=32)
    info = update.warm_start_folder(tiny_teacher_dir, root / "trimmed", tiny_prepared, "reviews", 20, 0, root / "warm")
    assert info == {"batch": "reviews", "replay_rows": 20}
    return root / "warm"


@pytest.fixture(scope="module")
def new_batch(tmp_path_factory):
    out = tmp_path_factory.mktemp("batch")
    return write_prepared(out, {"train": gadgets(16), "validation": gadgets(4, 100), "test": gadgets(4, 200)})


def test_warm_start_holds_teacher_student_first_batch_and_replay(warm):
    assert (warm / "teacher" / "model.safetensors").exists() and not (warm / "teacher" / "soft_targets").exists()
    assert (warm / "student" / "kept_token_ids.npy").exists()
    assert sorted(p.name for p in (warm / "batches" / "reviews").iterdir()) == sorted(batches.SPLIT_FILES)
    replay = pd.read_parquet(warm / "replay.parquet")
    assert len(replay) == 20 and set(replay["batch"]) == {"reviews"}
    assert list(batches.earlier_batches(warm)) == ["reviews"]


def test_update_restores_new_words_and_writes_the_next_warm_start(warm, new_batch, tmp_path):
    out = tmp_path / "next"
    result = update.run(CFG, warm, new_batch, "gadgets", out, NullTracker(), seed=0, max_length=32)
    m = result.metrics
    # 32 new rows + 20 replayed, one epoch each for teacher and student
    assert m["train_rows"] == 52 and m["replay_rows"] == 20 and m["examples"] == 2 * 52
    assert m["student.wordpieces_restored"] > 0 and "battery" in result.info["restored_pieces"]
    student_vocab = json.loads((out / "student" / "tokenizer.json").read_text())["model"]["vocab"]
    assert {"battery", "charge", "##r", "crisp"} <= set(student_vocab)
    assert list(batches.earlier_batches(out)) == ["reviews", "gadgets"]
    replay = pd.read_parquet(out / "replay.parquet")
    assert len(replay) == 20 and set(replay["batch"]) == {"reviews", "gadgets"}
    # every row keeps the soft outputs it was taught by: the first batch's from the champion's teacher
    # (the model that learned it), the new batch's from the updated teacher
    stored = stored_logits(replay, 2)
    assert not np.isnan(stored).any()
    first = replay["batch"].eq("reviews").to_numpy()
    np.testing.assert_allclose(stored[first], outputs(warm / "teacher", replay.loc[first]), atol=1e-4)
    np.testing.assert_allclose(stored[~first], outputs(out / "teacher", replay.loc[~first]), atol=1e-4)
    prepared = out / "prepared"
    assert len(pd.read_parquet(prepared / "validation.parquet")) == 16 + 8  # every batch's validation split
    assert len(pd.read_parquet(prepared / "test.parquet")) == 8  # the new batch's test split
    assert json.loads((prepared / "data_card.json").read_text())["labels"] == ["negative", "positive"]
    # the student mixed back toward the champion's weights by the fixed share, every share measured
    assert m["student.mix_share"] == 0.8
    assert set(result.info["mix_val_accuracy"]) == {"0.00", "0.20", "0.40", "0.60", "0.80", "1.00"}
    assert set(result.info["mix_val_accuracy"]["1.00"]) == {"gadgets", "reviews"}


def test_a_larger_replay_size_tops_the_buffer_up_at_the_same_cost(warm, new_batch, tmp_path):
    cfg = CFG.model_copy(update={"replay_size": 60, "replay_draws": 20})
    result = update.run(cfg, warm, new_batch, "gadgets", tmp_path / "next", NullTracker(), seed=0, max_length=32)
    reviews = len(pd.read_parquet(warm / "batches" / "reviews" / "train.parquet"))
    m = result.metrics
    # the champion's 20 replayed rows topped up from the reviews' train split to the share the size allows
    assert m["replay_rows"] == min(60, reviews) > 20
    # each epoch still draws the 32 new rows and 20 replayed ones: the cost of the 20-row buffer
    assert m["examples"] == 2 * (32 + 20)
    replay = pd.read_parquet(tmp_path / "next" / "replay.parquet")
    assert len(replay) == min(60, reviews + 32)
    assert not np.isnan(stored_logits(replay, 2)).any()  # every row now keeps the outputs it was taught by


def outputs(model_dir, rows: pd.DataFrame) -> np.ndarray:
    """A saved model's logits on `rows`."""
    model, tokenizer, labels, data, _ = update.load_encoded(model_dir, rows, rows, 32)
    return predict_logits(model, data, tokenizer.pad_token_id)


def test_replayed_rows_are_taught_by_their_stored_outputs(warm, new_batch, tmp_path):
    replay = pd.read_parquet(warm / "replay.parquet")
    rows, row_alpha = update.training_rows(CFG, new_batch, "gadgets", replay)
    val = update.validation_rows(CFG, new_batch, "gadgets", batches.earlier_batches(warm))
    stored = np.full((len(replay), 2), np.nan, dtype=np.float32)
    stored[:5] = [[4.0, -4.0]] * 5  # outputs kept for five rows, none for the others

    def taught(cfg):
        _, targets = update.update_teacher(
            cfg, warm / "teacher", rows, row_alpha, val, tmp_path / cfg.replay_targets, NullTracker(), 0, 32, stored
        )
        return targets

    parent = outputs(warm / "teacher", replay)
    learned = taught(CFG)
    np.testing.assert_allclose(learned[:5], stored[:5])
    np.testing.assert_allclose(learned[5:], parent[5:], atol=1e-4)  # no stored outputs: the previous teacher's
    np.testing.assert_allclose(taught(CFG.model_copy(update={"replay_targets": "previous"})), parent, atol=1e-4)


def test_mix_share_chosen_on_validation_or_fixed_off_the_grid(warm, new_batch, tmp_path):
    chosen = update.run(
        CFG.model_copy(update={"mix_share": None, "mix_budget_points": 0.0}),
        warm,
        new_batch,
        "gadgets",
        tmp_path / "a",
        NullTracker(),
        seed=0,
        max_length=32,
    )
    accuracy = {float(k): v for k, v in chosen.info["mix_val_accuracy"].items()}
    assert chosen.metrics["student.mix_share"] == choose_share(accuracy, "gadgets", 0.0)
    fixed = update.run(
        CFG.model_copy(update={"mix_share": 0.5}),
        warm,
        new_batch,
        "gadgets",
        tmp_path / "b",
        NullTracker(),
        seed=0,
        max_length=32,
    )
    assert fixed.metrics["student.mix_share"] == 0.5 and "0.50" in fixed.info["mix_val_accuracy"]


def test_the_updated_student_is_judged_by_the_accuracy_budget(warm, new_batch, tmp_path):
    budget = accuracy_budget(1.25, 0.25, 0.95)
    result = update.run(CFG, warm, new_batch, "gadgets", tmp_path / "next", NullTracker(), 0, 32, budget)
    m = result.metrics
    # the spent points are the updated teacher's validation accuracy over every batch less the student's
    val = pd.read_parquet(tmp_path / "next" / "prepared" / "validation.parquet")
    labels = np.array([["negative", "positive"].index(label) for label in val["label"]])
    teacher = outputs(tmp_path / "next" / "teacher", val).argmax(1) == labels
    student = outputs(tmp_path / "next" / "student", val).argmax(1) == labels
    assert m["student.spent_points"] == pytest.approx(100 * (teacher.mean() - student.mean()))
    assert m["student.spent_bound"] >= m["student.spent_points"]
    within = m["student.spent_points"] <= 1.25 and m["student.spent_bound"] <= 1.25 + 0.25
    assert m["student.within_budget"] == float(within)
    assert (
        "student.spent_points"
        not in update.run(CFG, warm, new_batch, "gadgets", tmp_path / "plain", NullTracker(), 0, 32).metrics
    )


def test_replay_kd_draws_batch_balanced_and_naive_every_row_once(warm, new_batch):
    replay = pd.read_parquet(warm / "replay.parquet")
    rows, _ = update.training_rows(CFG, new_batch, "gadgets", replay)
    assert rows["batch"].value_counts().to_dict() == {"gadgets": 32, "reviews": 20}
    draw = update.objective(CFG, rows).sampling(None)
    assert draw[rows["batch"].eq("gadgets").to_numpy()].sum() == pytest.approx(0.5)
    # an epoch draws the new batch's rows and at most replay_draws of the replayed ones
    assert update.objective(CFG, rows).draws == 32 + 20
    assert update.objective(CFG.model_copy(update={"replay_draws": 8}), rows).draws == 32 + 8
    assert update.objective(CFG.model_copy(update={"balanced": False}), rows).sampling is None
    naive = CFG.model_copy(update={"method": "naive"})
    alone, _ = update.training_rows(naive, new_batch, "gadgets", replay)
    assert len(alone) == 32 and update.objective(naive, alone).sampling is None


def test_naive_update_trains_on_the_new_batch_alone(warm, new_batch, tmp_path):
    cfg = CFG.model_copy(update={"method": "naive"})
    result = update.run(cfg, warm, new_batch, "gadgets", tmp_path / "next", NullTracker(), seed=0, max_length=32)
    assert result.metrics["train_rows"] == 32 and result.metrics["replay_rows"] == 0
    assert "student.mix_share" not in result.metrics  # the ablation ships the trained student as it is
    assert len(pd.read_parquet(tmp_path / "next" / "prepared" / "validation.parquet")) == 8


def test_unknown_label_and_taken_name_are_refused(warm, tmp_path):
    frame = gadgets(4)
    frame.loc[0, "label"] = "neutral"
    odd = write_prepared(tmp_path / "odd", {"train": frame, "validation": gadgets(2, 9), "test": gadgets(2, 19)})
    with pytest.raises(DataError, match="'neutral'.*keeps the label set"):
        update.run(CFG, warm, odd, "odd", tmp_path / "out", NullTracker(), seed=0, max_length=32)
    with pytest.raises(ValueError, match="already seen a batch called 'reviews'"):
        update.run(CFG, warm, odd, "reviews", tmp_path / "out", NullTracker(), seed=0, max_length=32)


def test_drop_seen_removes_texts_an_earlier_batch_holds(warm, tmp_path):
    earlier = batches.earlier_batches(warm)["reviews"]
    repeated = pd.concat([make_frame(2, 0), gadgets(2)], ignore_index=True)  # make_frame(.., 0): in train
    batch = write_prepared(tmp_path / "b", {"train": repeated, "validation": gadgets(1, 5), "test": gadgets(1, 6)})
    assert batches.drop_seen(batch, [earlier]) == 4
    assert len(pd.read_parquet(batch / "train.parquet")) == 4


@pytest.fixture(scope="module")
def shallow_warm(tiny_teacher_dir, tiny_prepared, tmp_path_factory):
    """A warm start whose trimmed student kept the tiny teacher's layer 0 alone (recorded in its config)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from components.classification.distill import keep_layers

    root = tmp_path_factory.mktemp("shallow")
    model = keep_layers(AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir), [0])
    model.save_pretrained(root / "student")
    AutoTokenizer.from_pretrained(tiny_teacher_dir).save_pretrained(root / "student")
    (root / "student" / "labels.json").write_text(json.dumps(["negative", "positive"]))
    texts = pd.concat([pd.read_parquet(tiny_prepared / f"{s}.parquet") for s in ("train", "validation")])["text"]
    trim.trim(root / "student", texts.tolist(), root / "trimmed", max_length=32)
    update.warm_start_folder(tiny_teacher_dir, root / "trimmed", tiny_prepared, "reviews", 20, 0, root / "warm", [0])
    return root / "warm"


def test_a_student_over_the_budget_on_its_batches_grows_before_it_learns(shallow_warm, new_batch, tmp_path):
    growth = Growth(layers=[0], deeper=[[0, 1]])
    assert json.loads((shallow_warm / "student" / "config.json").read_text())["teacher_layers"] == [0]
    # a budget no student can keep (-100 points): the champion student is over it and grows
    over = update.run(
        CFG,
        shallow_warm,
        new_batch,
        "gadgets",
        tmp_path / "grown",
        NullTracker(),
        0,
        32,
        AccuracyBudget(-100.0),
        growth,
    )
    m = over.metrics
    assert m["student.known_within_budget"] == 0.0 and m["student.grown_layer"] == 1
    assert m["student.grown_params_ratio"] > 1.0 and m["student.grown_params"] > 0
    config = json.loads((tmp_path / "grown" / "student" / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and config["teacher_layers"] == [0, 1]
    assert not (tmp_path / "grown" / "grown").exists()  # the grown start was trained into student/
    # the next warm start's student records its layers: a later update grows from there (none left here)
    again = update.run(
        CFG,
        tmp_path / "grown",
        new_batch,
        "more",
        tmp_path / "again",
        NullTracker(),
        0,
        32,
        AccuracyBudget(-100.0),
        growth,
    )
    assert "student.grown_layer" not in again.metrics and again.metrics["student.known_within_budget"] == 0.0
    # within the budget on the batches it knows (a budget of 100 points), the student keeps its architecture
    within = update.run(
        CFG, shallow_warm, new_batch, "gadgets", tmp_path / "kept", NullTracker(), 0, 32, AccuracyBudget(100.0), growth
    )
    assert within.metrics["student.known_within_budget"] == 1.0 and "student.grown_layer" not in within.metrics
    assert json.loads((tmp_path / "kept" / "student" / "config.json").read_text())["num_hidden_layers"] == 1
    # the naive ablation and `grow: false` judge nothing before training
    for cfg in (CFG.model_copy(update={"grow": False}), CFG.model_copy(update={"method": "naive"})):
        plain = update.run(
            cfg,
            shallow_warm,
            new_batch,
            "gadgets",
            tmp_path / cfg.method,
            NullTracker(),
            0,
            32,
            AccuracyBudget(-100.0),
            growth,
        )
        assert "student.known_spent_points" not in plain.metrics
