import itertools

import numpy as np
import pandas as pd
import pytest

from components.kit.replay import (
    COLUMNS,
    LOGITS,
    batch_balanced_draw,
    batch_shares,
    label_quotas,
    replay_buffer,
    stored_logits,
    topped_up,
    with_logits,
)


def frame(name: str, positive: int, negative: int = None) -> pd.DataFrame:
    """`positive` + `negative` rows (balanced when negative is not given), each text naming its batch."""
    negative = positive if negative is None else negative
    rows = [(f"{name} good {i}", "positive") for i in range(positive)]
    rows += [(f"{name} bad {i}", "negative") for i in range(negative)]
    return pd.DataFrame(rows, columns=["text", "label"])


def rows_of(buffer: pd.DataFrame, batch: str) -> set[tuple[str, str]]:
    part = buffer[buffer["batch"] == batch]
    return set(zip(part["text"], part["label"]))


# ---------------------------------------------------------------- batch_shares


def test_shares_split_equally():
    assert batch_shares({"a": 100, "b": 100, "c": 100}, 30) == {"a": 10, "b": 10, "c": 10}


def test_small_batch_gives_its_leftover_to_the_others():
    assert batch_shares({"a": 4, "b": 100, "c": 100}, 30) == {"a": 4, "b": 13, "c": 13}


def test_leftovers_cascade():
    # a and b are both below the equal share once a's leftover is split again.
    assert batch_shares({"a": 2, "b": 9, "c": 100}, 30) == {"a": 2, "b": 9, "c": 19}


def test_size_above_the_total_keeps_everything():
    assert batch_shares({"a": 3, "b": 5}, 100) == {"a": 3, "b": 5}


def test_uneven_split_favours_the_newest_batches():
    assert batch_shares({"a": 100, "b": 100, "c": 100}, 5) == {"a": 1, "b": 2, "c": 2}
    assert batch_shares({"a": 100, "b": 100, "c": 100}, 1) == {"a": 0, "b": 0, "c": 1}


def test_empty_batches_and_sizes():
    assert batch_shares({}, 10) == {}
    assert batch_shares({"a": 0, "b": 5}, 3) == {"a": 0, "b": 3}
    assert batch_shares({"a": 5, "b": 5}, 0) == {"a": 0, "b": 0}


def test_shares_refuse_negative_input():
    with pytest.raises(ValueError, match="size"):
        batch_shares({"a": 1}, -1)
    with pytest.raises(ValueError, match="counts"):
        batch_shares({"a": -1}, 1)


@pytest.mark.parametrize("seed", range(20))
def test_shares_are_water_filling(seed):
    rng = np.random.default_rng(seed)
    counts = {f"b{i}": int(n) for i, n in enumerate(rng.integers(0, 40, size=rng.integers(1, 7)))}
    size = int(rng.integers(0, 120))
    shares = batch_shares(counts, size)
    assert list(shares) == list(counts)
    assert sum(shares.values()) == min(size, sum(counts.values()))
    assert all(0 <= shares[b] <= counts[b] for b in counts)
    # A batch cut below its count gets at least as much as any other batch, less at most one row.
    for cut, other in itertools.permutations(counts, 2):
        if shares[cut] < counts[cut]:
            assert shares[cut] >= shares[other] - 1


# ---------------------------------------------------------------- label_quotas


def test_label_quotas_are_proportional():
    labels = pd.Series(["pos"] * 30 + ["neg"] * 10)
    assert label_quotas(labels, 8) == {"neg": 2, "pos": 6}


def test_label_quotas_largest_remainder_and_ties():
    labels = pd.Series(["a"] * 5 + ["b"] * 5 + ["c"] * 5)
    assert label_quotas(labels, 4) == {"a": 2, "b": 1, "c": 1}  # a tie: the label that sorts first
    assert label_quotas(pd.Series(["a"] * 6 + ["b"] * 3 + ["c"] * 1), 5) == {"a": 3, "b": 2}  # 3, 1.5, 0.5


def test_label_quotas_never_exceed_the_counts():
    labels = pd.Series(["a"] * 2 + ["b"] * 1)
    assert label_quotas(labels, 10) == {"a": 2, "b": 1}


# ---------------------------------------------------------------- replay_buffer


def test_first_update_keeps_the_batch_within_size():
    buffer = replay_buffer(None, frame("a", 10), "a", size=8, seed=0)
    assert list(buffer.columns) == COLUMNS
    assert len(buffer) == 8 and set(buffer["batch"]) == {"a"}
    assert rows_of(buffer, "a") <= set(zip(frame("a", 10)["text"], frame("a", 10)["label"]))
    assert buffer["label"].value_counts().to_dict() == {"positive": 4, "negative": 4}


def test_small_batch_is_kept_whole():
    buffer = replay_buffer(None, frame("a", 3), "a", size=100, seed=0)
    assert len(buffer) == 6
    assert buffer[["text", "label"]].equals(frame("a", 3))


def test_equal_share_per_batch():
    buffer = replay_buffer(None, frame("a", 20), "a", size=12, seed=0)
    buffer = replay_buffer(buffer, frame("b", 20), "b", size=12, seed=0)
    buffer = replay_buffer(buffer, frame("c", 20), "c", size=12, seed=0)
    assert buffer["batch"].value_counts().to_dict() == {"a": 4, "b": 4, "c": 4}
    assert buffer["batch"].tolist() == ["a"] * 4 + ["b"] * 4 + ["c"] * 4  # in the order the batches came


def test_a_small_new_batch_leaves_room_for_the_others():
    buffer = replay_buffer(None, frame("a", 20), "a", size=12, seed=0)
    buffer = replay_buffer(buffer, frame("b", 1), "b", size=12, seed=0)
    assert buffer["batch"].value_counts().to_dict() == {"a": 10, "b": 2}


def test_stratified_inside_a_batch():
    buffer = replay_buffer(None, frame("a", 30, 10), "a", size=8, seed=3)
    assert buffer["label"].value_counts().to_dict() == {"positive": 6, "negative": 2}


def test_rare_label_survives_the_cut():
    buffer = replay_buffer(None, frame("a", 95, 5), "a", size=20, seed=0)
    assert buffer["label"].value_counts().to_dict() == {"positive": 19, "negative": 1}


def test_deterministic_for_a_seed_and_different_across_seeds():
    one = replay_buffer(None, frame("a", 50), "a", size=10, seed=7)
    assert one.equals(replay_buffer(None, frame("a", 50), "a", size=10, seed=7))
    others = [replay_buffer(None, frame("a", 50), "a", size=10, seed=s) for s in range(8, 12)]
    assert any(set(o["text"]) != set(one["text"]) for o in others)


def test_kept_rows_of_a_batch_are_a_reservoir():
    """Across updates a batch's rows only shrink, always to a subset of the rows it had."""
    buffer = replay_buffer(None, frame("a", 40), "a", size=40, seed=1)
    history = [rows_of(buffer, "a")]
    for name in ("b", "c", "d", "e"):
        buffer = replay_buffer(buffer, frame(name, 40), name, size=40, seed=1)
        history.append(rows_of(buffer, "a"))
        assert len(buffer) == 40
    sizes = [len(rows) for rows in history]
    assert sizes == [40, 20, 13, 10, 8]
    for earlier, later in zip(history, history[1:]):
        assert later <= earlier


def test_previous_rows_are_never_redrawn_from_the_batch():
    """Rows of an earlier batch that left the buffer do not come back, even with room to spare."""
    buffer = replay_buffer(None, frame("a", 20), "a", size=10, seed=0)
    kept_a = rows_of(buffer, "a")
    buffer = replay_buffer(buffer, frame("b", 1), "b", size=40, seed=0)
    assert rows_of(buffer, "a") == kept_a and len(buffer) == 12


def test_rerunning_an_update_gives_the_same_buffer():
    first = replay_buffer(None, frame("a", 30), "a", size=20, seed=0)
    after_b = replay_buffer(first, frame("b", 30), "b", size=20, seed=0)
    again = replay_buffer(after_b, frame("b", 30), "b", size=20, seed=0)
    assert again.equals(after_b)


def test_previous_rows_of_the_same_batch_are_replaced():
    first = replay_buffer(None, frame("a", 5), "a", size=100, seed=0)
    second = replay_buffer(first, frame("a", 2), "a", size=100, seed=0)
    assert len(second) == 4 and rows_of(second, "a") == set(zip(frame("a", 2)["text"], frame("a", 2)["label"]))


def test_new_batch_columns_are_normalised():
    new = frame("a", 2).assign(batch="wrong", extra=1.0)
    buffer = replay_buffer(None, new, "a", size=10, seed=0)
    assert list(buffer.columns) == COLUMNS and set(buffer["batch"]) == {"a"}


def test_empty_inputs():
    empty = replay_buffer(None, frame("a", 0), "a", size=5, seed=0)
    assert list(empty.columns) == COLUMNS and len(empty) == 0
    previous = replay_buffer(None, frame("a", 3), "a", size=5, seed=0)
    kept = replay_buffer(previous, frame("b", 0), "b", size=5, seed=0)
    assert kept.equals(previous)
    assert replay_buffer(previous.iloc[:0], frame("b", 1), "b", size=5, seed=0)["batch"].tolist() == ["b", "b"]


def test_size_one_holds_the_newest_batch():
    buffer = replay_buffer(None, frame("a", 5), "a", size=1, seed=0)
    buffer = replay_buffer(buffer, frame("b", 5), "b", size=1, seed=0)
    assert buffer["batch"].tolist() == ["b"]


@pytest.mark.parametrize("size", [0, -3])
def test_size_must_be_positive(size):
    with pytest.raises(ValueError, match=">= 1"):
        replay_buffer(None, frame("a", 2), "a", size=size, seed=0)


def test_inputs_are_not_modified():
    previous = replay_buffer(None, frame("a", 10), "a", size=6, seed=0)
    previous_copy, new = previous.copy(), frame("b", 10)
    new_copy = new.copy()
    replay_buffer(previous, new, "b", size=6, seed=0)
    assert previous.equals(previous_copy) and new.equals(new_copy)


# ---------------------------------------------------------------- batch_balanced_draw


def test_balanced_draw_gives_every_batch_the_same_total_probability():
    batches = ["new"] * 6 + ["movie"] * 2 + ["amazon"] * 1
    draw = batch_balanced_draw(batches)
    assert draw.sum() == pytest.approx(1.0)
    names = np.array(batches)
    for name in ("new", "movie", "amazon"):
        assert draw[names == name].sum() == pytest.approx(1 / 3)
    assert draw[0] == pytest.approx(1 / 18) and draw[-1] == pytest.approx(1 / 3)


def test_balanced_draw_of_one_batch_is_every_row_once():
    assert batch_balanced_draw(["new"] * 4) is None


# ---------------------------------------------------------------- stored soft outputs


def test_stored_outputs_travel_with_their_rows():
    first = replay_buffer(None, with_logits(frame("a", 10), np.arange(40).reshape(20, 2)), "a", 12, seed=0)
    assert list(first.columns) == COLUMNS + [LOGITS]
    # each kept row still holds its own outputs: row i of batch a was given [2i, 2i + 1]
    source = {text: i for i, text in enumerate(frame("a", 10)["text"])}
    for text, logits in zip(first["text"], first[LOGITS]):
        assert list(logits) == [2 * source[text], 2 * source[text] + 1]
    # a batch arriving without outputs gets None; the earlier batch keeps its own, only ever fewer of them
    second = replay_buffer(first, frame("b", 10), "b", 12, seed=0)
    kept_a = second[second["batch"] == "a"]
    assert rows_of(second, "a") <= rows_of(first, "a")
    assert all(logits is not None for logits in kept_a[LOGITS])
    assert all(logits is None for logits in second.loc[second["batch"] == "b", LOGITS])


def test_stored_outputs_read_back_nan_where_missing(tmp_path):
    buffer = replay_buffer(None, with_logits(frame("a", 2), np.ones((4, 3))), "a", 4, seed=0)
    buffer = replay_buffer(buffer, frame("b", 1), "b", 6, seed=0)
    buffer.to_parquet(tmp_path / "replay.parquet", index=False)  # as an update stores and reads it
    read = stored_logits(pd.read_parquet(tmp_path / "replay.parquet"), 3)
    is_a = (buffer["batch"] == "a").to_numpy()
    assert read.shape == (6, 3) and read.dtype == np.float32
    assert (read[is_a] == 1).all() and np.isnan(read[~is_a]).all()
    # a buffer written before outputs were stored: none known
    assert np.isnan(stored_logits(frame("c", 2).assign(batch="c"), 3)).all()


def test_buffer_without_outputs_keeps_its_columns():
    assert list(replay_buffer(None, frame("a", 3), "a", 4, seed=0).columns) == COLUMNS


# ---------------------------------------------------------------- topped_up


def test_a_buffer_grows_to_a_larger_size_from_the_train_splits():
    trains = {"a": frame("a", 10), "b": frame("b", 3)}
    small = replay_buffer(
        replay_buffer(None, with_logits(trains["a"], np.ones((20, 2))), "a", 4, seed=0), trains["b"], "b", 4, 0
    )
    grown = topped_up(small, trains, 16, seed=0)
    # shares of 16 over 20 and 6 rows: b keeps all 6, a gets the other 10
    assert grown["batch"].value_counts().to_dict() == {"a": 10, "b": 6}
    assert not grown["text"].duplicated().any()
    for name in trains:
        assert rows_of(small, name) <= rows_of(grown, name) <= set(zip(trains[name]["text"], trains[name]["label"]))
    # the rows it had keep their stored outputs, the rows added have none; each batch's rows stay together
    kept = grown["text"].isin(small["text"])
    assert grown.loc[kept, LOGITS].tolist() == small[LOGITS].tolist()
    assert grown.loc[~kept, LOGITS].isna().all()
    assert grown["batch"].tolist() == ["a"] * 10 + ["b"] * 6
    # label-stratified: a's extra rows split evenly between its two labels
    assert grown[grown["batch"] == "a"]["label"].value_counts().to_dict() == {"positive": 5, "negative": 5}


def test_a_buffer_at_its_size_or_above_is_kept_as_it_is():
    trains = {"a": frame("a", 10), "b": frame("b", 10)}
    buffer = replay_buffer(replay_buffer(None, trains["a"], "a", 8, seed=0), trains["b"], "b", 8, seed=0)
    for size in (8, 4):
        again = topped_up(buffer, trains, size, seed=0)
        assert again[COLUMNS].equals(buffer[COLUMNS])


def test_topping_up_is_deterministic_and_adds_a_batch_the_buffer_lacks():
    trains = {"a": frame("a", 6), "b": frame("b", 6)}
    buffer = replay_buffer(None, trains["a"], "a", 4, seed=0)
    first, second = (topped_up(buffer, trains, 12, seed=3) for _ in range(2))
    assert first.equals(second)
    assert first["batch"].value_counts().to_dict() == {"a": 12 // 2, "b": 12 // 2}
