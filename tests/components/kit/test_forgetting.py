import math

import pytest

from components.kit import forgetting
from components.kit.forgetting import decide, forgetting_points, most_forgotten, per_batch, reason
from components.kit.gate import Check, GateDecision

CHECKS = ["forgetting", "new_batch_accuracy"]


def rows(before, after, new="new"):
    return per_batch(before, after, new)


# ---------------------------------------------------------------- per_batch


def test_per_batch_rows_in_the_order_of_after():
    table = rows({"imdb": 0.90, "amazon": 0.85}, {"amazon": 0.84, "imdb": 0.91, "new": 0.80})
    assert [r["batch"] for r in table] == ["amazon", "imdb", "new"]
    assert table[0] == {
        "batch": "amazon",
        "before": 0.85,
        "after": 0.84,
        "change_points": pytest.approx(-1.0),
        "new": False,
        "paired": None,
    }
    assert table[1]["change_points"] == pytest.approx(1.0) and table[1]["new"] is False
    assert table[2] == {
        "batch": "new",
        "before": None,
        "after": 0.80,
        "change_points": None,
        "new": True,
        "paired": None,
    }


def test_per_batch_keeps_a_baseline_for_the_new_batch():
    table = rows({"imdb": 0.9, "new": 0.6}, {"imdb": 0.9, "new": 0.8})
    assert table[1]["before"] == 0.6 and table[1]["change_points"] == pytest.approx(20.0)


def test_per_batch_missing_and_nan_figures_are_none():
    table = rows({"imdb": float("nan"), "amazon": 0.8}, {"imdb": 0.9, "amazon": None, "new": float("nan")})
    assert [(r["before"], r["after"], r["change_points"]) for r in table] == [
        (None, 0.9, None),
        (0.8, None, None),
        (None, None, None),
    ]


def test_per_batch_adds_a_row_for_an_earlier_batch_missing_after():
    table = rows({"imdb": 0.9, "amazon": 0.8}, {"imdb": 0.9, "new": 0.8})
    assert [r["batch"] for r in table] == ["imdb", "new", "amazon"]
    assert table[2] == {
        "batch": "amazon",
        "before": 0.8,
        "after": None,
        "change_points": None,
        "new": False,
        "paired": None,
    }


# ---------------------------------------------------------------- paired outcomes


def test_paired_change_counts_each_way_and_tests_them():
    before = [True] * 50 + [False] * 33 + [True] * 900 + [False] * 23
    after = [False] * 50 + [True] * 33 + [True] * 900 + [False] * 23
    paired = forgetting.paired_change(before, after)
    # the first champion and the final model of a measured stream, on the movie snippets' test split
    assert paired == {"n": 1006, "lost": 50, "gained": 33, "p_value": pytest.approx(0.0785, abs=5e-4)}


def test_paired_change_without_discordant_sentences_is_certainly_chance():
    assert forgetting.paired_change([True, False], [True, False]) == {"n": 2, "lost": 0, "gained": 0, "p_value": 1.0}


def test_paired_change_all_one_way_is_unlikely():
    paired = forgetting.paired_change([True] * 12, [False] * 12)
    assert paired["lost"] == 12 and paired["gained"] == 0 and paired["p_value"] < 0.001


def test_paired_change_needs_the_same_sentences():
    with pytest.raises(ValueError, match="3 before, 2 after"):
        forgetting.paired_change([True] * 3, [True] * 2)


def test_p_values_print_with_the_digits_they_need():
    assert [forgetting.p_value_text(p) for p in (0.0785, 0.0042, 0.0004, 1.0)] == ["0.08", "0.004", "<0.001", "1.00"]


def test_per_batch_keeps_each_batch_paired_figures():
    pair = {"n": 10, "lost": 3, "gained": 1, "p_value": 0.625}
    table = per_batch({"imdb": 0.9}, {"imdb": 0.7, "new": 0.8}, "new", {"imdb": pair})
    assert table[0]["paired"] == pair and table[1]["paired"] is None


# ---------------------------------------------------------------- forgetting_points


def test_first_update_with_one_earlier_batch():
    table = rows({"original": 0.90}, {"original": 0.87, "new": 0.8})
    assert forgetting_points(table) == pytest.approx(3.0)
    assert most_forgotten(table) == "original"


def test_largest_drop_among_earlier_batches():
    table = rows({"a": 0.9, "b": 0.8, "c": 0.7}, {"a": 0.89, "b": 0.75, "c": 0.72, "new": 0.5})
    assert forgetting_points(table) == pytest.approx(5.0)
    assert most_forgotten(table) == "b"


def test_all_batches_improving_is_zero_forgetting():
    table = rows({"a": 0.8, "b": 0.7}, {"a": 0.85, "b": 0.71, "new": 0.9})
    assert forgetting_points(table) == 0.0
    assert most_forgotten(table) is None


def test_no_earlier_batch_is_zero_forgetting():
    assert forgetting_points(rows({}, {"new": 0.9})) == 0.0


def test_the_new_batch_never_counts_as_forgotten():
    table = rows({"a": 0.8, "new": 0.9}, {"a": 0.8, "new": 0.5})
    assert forgetting_points(table) == 0.0


def test_missing_earlier_figure_is_nan():
    assert math.isnan(forgetting_points(rows({"a": 0.8, "b": None}, {"a": 0.9, "b": 0.9, "new": 0.9})))
    assert math.isnan(forgetting_points(rows({"a": 0.8}, {"a": float("nan"), "new": 0.9})))


# ---------------------------------------------------------------- decide


def test_decide_passes_a_good_update():
    decision = decide(rows({"a": 0.90}, {"a": 0.895, "new": 0.85}), 1.0, 0.80)
    assert isinstance(decision, GateDecision)
    assert decision.passed and list(decision.checks) == CHECKS
    assert decision.checks["forgetting"].value == pytest.approx(0.5)
    assert decision.checks["forgetting"].threshold == 1.0
    assert decision.checks["new_batch_accuracy"].value == pytest.approx(85.0)
    assert decision.checks["new_batch_accuracy"].threshold == pytest.approx(80.0)
    assert all(c.note == "" for c in decision.checks.values())


def test_decide_fails_on_forgetting():
    decision = decide(rows({"a": 0.90}, {"a": 0.868, "new": 0.85}), 1.0, 0.80)
    assert not decision.passed and decision.failed() == ["forgetting"]
    assert decision.checks["forgetting"].value == pytest.approx(3.2)


def test_decide_fails_on_a_weak_new_batch():
    decision = decide(rows({"a": 0.90}, {"a": 0.90, "new": 0.79}), 1.0, 0.80)
    assert decision.failed() == ["new_batch_accuracy"]


def test_equal_to_the_thresholds_passes():
    # 100 * (0.91 - 0.89) is 2.0000000000000018: TOLERANCE absorbs it.
    decision = decide(rows({"a": 0.91}, {"a": 0.89, "new": 0.8}), 2.0, 0.8)
    assert decision.passed
    assert decide(rows({"a": 0.91}, {"a": 0.89, "new": 0.7999999999}), 2.0, 0.8).failed() == ["new_batch_accuracy"]


def test_all_improving_passes_a_zero_threshold():
    assert decide(rows({"a": 0.8, "b": 0.7}, {"a": 0.85, "b": 0.71, "new": 0.9}), 0.0, 0.5).passed


def test_nan_forgetting_fails_with_a_note_naming_the_batch():
    decision = decide(rows({"a": 0.8, "b": 0.7}, {"a": 0.8, "b": None, "new": 0.9}), 1.0, 0.5)
    check = decision.checks["forgetting"]
    assert not decision.passed and decision.failed() == ["forgetting"]
    assert math.isnan(check.value) and not check.passed and "b" in check.note and "a" not in check.note.split()
    assert decision.as_dict()["checks"]["forgetting"]["value"] is None


def test_missing_new_batch_figure_fails_with_a_note():
    decision = decide(rows({"a": 0.8}, {"a": 0.8, "new": None}), 1.0, 0.5)
    check = decision.checks["new_batch_accuracy"]
    assert decision.failed() == ["new_batch_accuracy"]
    assert math.isnan(check.value) and "new" in check.note


def test_new_batch_absent_from_the_rows_fails():
    decision = decide(rows({"a": 0.8}, {"a": 0.8}), 1.0, 0.5)
    assert decision.failed() == ["new_batch_accuracy"]
    assert "the new batch" in decision.checks["new_batch_accuracy"].note


# ---------------------------------------------------------------- reason


def test_reason_when_passed():
    table = rows({"a": 0.9}, {"a": 0.9, "new": 0.9})
    assert reason(decide(table, 1.0, 0.8), table) == "passed"


def test_reason_names_the_most_forgotten_batch():
    table = rows({"imdb": 0.9, "amazon": 0.9}, {"imdb": 0.89, "amazon": 0.868, "new": 0.9})
    assert reason(decide(table, 1.0, 0.8), table) == "forgetting: 3.20 points on amazon > 1.00 allowed"


def test_reason_gives_the_sentences_behind_the_drop():
    pair = {"n": 1006, "lost": 50, "gained": 33, "p_value": 0.0785}
    table = per_batch({"movie": 0.8847, "new": 0.5}, {"movie": 0.8678, "new": 0.8}, "new", {"movie": pair})
    assert reason(decide(table, 1.0, 0.7), table) == (
        "forgetting: 1.69 points on movie > 1.00 allowed (on its 1,006 test sentences: 50 right to wrong, "
        "33 wrong to right; McNemar p=0.08)"
    )


def test_reason_lists_every_failed_check():
    table = rows({"amazon": 0.9}, {"amazon": 0.868, "yelp": 0.71}, new="yelp")
    assert reason(decide(table, 1.0, 0.8), table) == (
        "forgetting: 3.20 points on amazon > 1.00 allowed; new_batch_accuracy: 71.00 points on yelp < 80.00 required"
    )


def test_reason_for_missing_figures_uses_the_notes():
    table = rows({"amazon": 0.9}, {"amazon": None, "yelp": None}, new="yelp")
    decision = decide(table, 1.0, 0.8)
    line = reason(decision, table)
    assert line.startswith("forgetting: no accuracy figure for earlier batch(es) amazon")
    assert "; new_batch_accuracy: no accuracy figure for the new batch yelp" in line


def test_reason_below_a_negative_threshold_names_no_batch():
    table = rows({"a": 0.8}, {"a": 0.9, "new": 0.9})
    assert reason(decide(table, -1.0, 0.5), table) == "forgetting: 0.00 points > -1.00 allowed"


def test_reason_describes_checks_added_by_the_caller():
    table = rows({"a": 0.9}, {"a": 0.9, "new": 0.9})
    extra = Check(value=1.5, threshold=1.1, passed=False)
    decision = GateDecision.of(decide(table, 1.0, 0.8).checks | {"size_growth_vs_champion": extra})
    assert reason(decision, table) == "size_growth_vs_champion: 1.50 against 1.10"


# ---------------------------------------------------------------- champion_check


def test_champion_check_reads_the_largest_drop_against_the_current_champion():
    champion = {"movie": 0.8718, "amazon": 0.8696}
    after = {"movie": 0.8579, "amazon": 0.8896, "nyt": 0.79}  # a batch the champion never saw is not compared
    check = forgetting.champion_check(champion, after, 1.0)
    assert check.value == pytest.approx(1.39) and not check.passed
    assert check.note == "largest drop on movie against the current champion"
    assert forgetting.champion_check(champion, {"movie": 0.87, "amazon": 0.87}, 1.0).passed


def test_champion_check_fails_without_a_figure_for_a_champion_batch():
    check = forgetting.champion_check({"movie": 0.87, "food": 0.9}, {"movie": 0.87}, 1.0)
    assert not check.passed and "food" in check.note
