import math

import pytest

from components.config import GateConfig
from components.kit.gate import Check, GateDecision, compare_to_teacher, decide

CFG = GateConfig(max_drop_vs_teacher_points=2.0, min_size_ratio=3.0, min_speedup=3.0)
CHECKS = ["accuracy_drop_points", "size_ratio", "speedup_batch1_p50"]


def entry(accuracy=0.9, size_bytes=90_000_000, b1=9.0, b32=90.0) -> dict:
    return {
        "accuracy": accuracy,
        "size_bytes": size_bytes,
        "latency_ms": {"batch1_p50": b1, "batch1_p95": 2 * b1, "batch32_p50": b32},
    }


def ratios(drop=1.0, size=4.0, speedup=4.0) -> dict:
    return {"accuracy_drop_points": drop, "size_ratio": size, "speedup_batch1_p50": speedup, "speedup_batch32_p50": 1.0}


# ---------------------------------------------------------------- compare_to_teacher


def test_compare_to_teacher_ratios():
    r = compare_to_teacher(entry(0.91, 90_000_000, 9.0, 90.0), entry(0.895, 22_500_000, 3.0, 45.0))
    assert set(r) == {"size_ratio", "speedup_batch1_p50", "speedup_batch32_p50", "accuracy_drop_points"}
    assert r["size_ratio"] == pytest.approx(4.0)
    assert r["speedup_batch1_p50"] == pytest.approx(3.0)
    assert r["speedup_batch32_p50"] == pytest.approx(2.0)
    assert r["accuracy_drop_points"] == pytest.approx(1.5)


def test_compare_to_teacher_better_final_gives_negative_drop():
    assert compare_to_teacher(entry(0.80), entry(0.85))["accuracy_drop_points"] == pytest.approx(-5.0)


def test_compare_to_teacher_identical_models():
    r = compare_to_teacher(entry(), entry())
    assert r == {"size_ratio": 1.0, "speedup_batch1_p50": 1.0, "speedup_batch32_p50": 1.0, "accuracy_drop_points": 0.0}


def test_compare_to_teacher_zero_denominators_do_not_raise():
    r = compare_to_teacher(entry(size_bytes=100, b1=5.0), entry(size_bytes=0, b1=0.0, b32=0.0))
    assert r["size_ratio"] == math.inf and r["speedup_batch1_p50"] == math.inf
    r = compare_to_teacher(entry(size_bytes=0, b1=0.0), entry(size_bytes=0, b1=0.0))
    assert math.isnan(r["size_ratio"]) and math.isnan(r["speedup_batch1_p50"])


def test_compare_to_teacher_propagates_nan():
    r = compare_to_teacher(entry(b1=float("nan")), entry())
    assert math.isnan(r["speedup_batch1_p50"])


# ---------------------------------------------------------------- decide: passing and boundaries


def test_all_checks_pass():
    d = decide(ratios(), CFG)
    assert d.passed and d.failed() == []
    assert list(d.checks) == CHECKS
    assert d.checks["size_ratio"] == Check(value=4.0, threshold=3.0, passed=True)


def test_values_equal_to_thresholds_pass():
    d = decide(ratios(drop=2.0, size=3.0, speedup=3.0), CFG)
    assert d.passed, d.failed()
    assert all(c.passed for c in d.checks.values())


def test_threshold_reached_through_float_arithmetic_passes():
    # 100 * (0.91 - 0.89) == 2.0000000000000018: still a drop of exactly 2 points.
    r = compare_to_teacher(entry(accuracy=0.91), entry(accuracy=0.89))
    assert r["accuracy_drop_points"] > 2.0
    assert decide(r | {"size_ratio": 3.0, "speedup_batch1_p50": 3.0}, CFG).passed


@pytest.mark.parametrize("name, value", [("drop", 2.0 + 1e-6), ("size", 3.0 - 1e-6), ("speedup", 3.0 - 1e-6)])
def test_just_past_a_threshold_fails(name, value):
    assert not decide(ratios(**{name: value}), CFG).passed


def test_negative_accuracy_drop_passes():
    assert decide(ratios(drop=-3.0), CFG).passed


def test_zero_thresholds():
    cfg = GateConfig(max_drop_vs_teacher_points=0.0, min_size_ratio=0.0, min_speedup=0.0)
    assert decide(ratios(drop=0.0, size=0.0, speedup=0.0), cfg).passed
    assert decide(ratios(drop=0.01, size=0.0, speedup=0.0), cfg).failed() == ["accuracy_drop_points"]


# ---------------------------------------------------------------- decide: each single failure


@pytest.mark.parametrize(
    "kwargs, failing",
    [
        ({"drop": 2.5}, "accuracy_drop_points"),
        ({"size": 2.9}, "size_ratio"),
        ({"speedup": 1.5}, "speedup_batch1_p50"),
    ],
)
def test_each_single_failure(kwargs, failing):
    d = decide(ratios(**kwargs), CFG)
    assert not d.passed
    assert d.failed() == [failing]
    assert [n for n, c in d.checks.items() if c.passed] == [n for n in CHECKS if n != failing]


def test_all_failures_listed_in_check_order():
    d = decide(ratios(drop=10.0, size=1.0, speedup=1.0), CFG)
    assert not d.passed and d.failed() == CHECKS


def test_batch32_speedup_is_not_gated():
    assert decide(ratios() | {"speedup_batch32_p50": 0.1}, CFG).passed


# ---------------------------------------------------------------- decide: NaN, inf, missing


@pytest.mark.parametrize("name", ["drop", "size", "speedup"])
def test_nan_fails_its_check(name):
    d = decide(ratios(**{name: float("nan")}), CFG)
    assert not d.passed and len(d.failed()) == 1
    failing = d.checks[d.failed()[0]]
    assert math.isnan(failing.value) and not failing.passed


@pytest.mark.parametrize(
    "name, value",
    [
        ("drop", math.inf),
        ("drop", -math.inf),
        ("size", math.inf),
        ("size", -math.inf),
        ("speedup", math.inf),
        ("speedup", -math.inf),
    ],
)
def test_infinite_values_fail_their_check(name, value):
    # inf only arises from a zero measurement (0 bytes, 0 ms): not something to ship on.
    d = decide(ratios(**{name: value}), CFG)
    assert not d.passed and len(d.failed()) == 1


def test_missing_ratio_fails_as_nan():
    r = ratios()
    del r["size_ratio"]
    d = decide(r, CFG)
    assert d.failed() == ["size_ratio"] and math.isnan(d.checks["size_ratio"].value)
    assert decide({}, CFG).failed() == CHECKS


def test_none_and_integer_values():
    assert decide(ratios(size=None), CFG).failed() == ["size_ratio"]
    d = decide({"accuracy_drop_points": 0, "size_ratio": 4, "speedup_batch1_p50": 3}, CFG)
    assert d.passed and isinstance(d.checks["size_ratio"].value, float)


# ---------------------------------------------------------------- GateDecision


def test_as_dict_shape():
    d = decide(ratios(drop=2.5), CFG)
    out = d.as_dict()
    assert out["passed"] is False
    assert set(out["checks"]) == set(CHECKS)
    assert out["checks"]["accuracy_drop_points"] == {"value": 2.5, "threshold": 2.0, "passed": False, "note": ""}
    for check in out["checks"].values():
        assert set(check) == {"value", "threshold", "passed", "note"}
        assert isinstance(check["passed"], bool) and isinstance(check["threshold"], float)


def test_decision_is_frozen():
    d = decide(ratios(), CFG)
    with pytest.raises(AttributeError):
        d.passed = False
    assert isinstance(d, GateDecision)


def test_end_to_end_from_report_entries():
    teacher, final = entry(0.91, 90_000_000, 9.0), entry(0.90, 22_000_000, 2.5)
    d = decide(compare_to_teacher(teacher, final), CFG)
    assert d.passed
    slow = entry(0.90, 22_000_000, 4.0)
    assert decide(compare_to_teacher(teacher, slow), CFG).failed() == ["speedup_batch1_p50"]


SAME = {"data_sha256": "ab" * 32, "split": "test"}  # where a figure was measured


def test_a_candidate_worse_than_the_champion_beyond_tolerance_fails():
    from components.kit.gate import combine, compare_to_champion

    cfg = GateConfig(max_drop_vs_champion_points=0.5, max_size_growth_vs_champion=1.1)
    champion = {"accuracy": 0.88, "size_bytes": 8_000_000, **SAME}
    ok = compare_to_champion({"accuracy": 0.876, "size_bytes": 8_500_000, **SAME}, champion, cfg)
    assert ok.passed and ok.checks["vs_champion.accuracy_drop_points"].value == pytest.approx(0.4)
    worse = compare_to_champion({"accuracy": 0.87, "size_bytes": 9_000_000, **SAME}, champion, cfg)
    assert worse.failed() == ["vs_champion.accuracy_drop_points", "vs_champion.size_growth"]
    missing = compare_to_champion(dict(SAME), champion, cfg)
    assert not missing.passed
    both = combine(decide({"size_ratio": 10, "speedup_batch1_p50": 10, "accuracy_drop_points": 0}, GateConfig()), worse)
    assert not both.passed and "size_ratio" in both.checks and "vs_champion.size_growth" in both.failed()


# ---------------------------------------------------------------- like with like, and figures not measured


def test_a_champion_measured_on_other_data_or_split_is_not_compared():
    from components.kit.gate import compare_to_champion

    cfg = GateConfig(max_drop_vs_champion_points=0.5, max_size_growth_vs_champion=1.1)
    champion = {"accuracy": 0.95, "size_bytes": 8_000_000, **SAME}
    candidate = {"accuracy": 0.80, "size_bytes": 8_000_000}
    other_data = compare_to_champion(candidate | SAME | {"data_sha256": "cd" * 32}, champion, cfg)
    check = other_data.checks["vs_champion.accuracy_drop_points"]
    assert other_data.passed and check.skipped and check.note == "champion measured on other data: not compared"
    assert other_data.as_dict()["checks"]["vs_champion.accuracy_drop_points"]["value"] is None
    other_split = compare_to_champion(candidate | SAME | {"split": "validation"}, champion, cfg)
    assert other_split.passed and "validation split" in other_split.checks["vs_champion.accuracy_drop_points"].note
    unknown = compare_to_champion(candidate | SAME, {"accuracy": 0.95, "size_bytes": 8_000_000}, cfg)
    assert unknown.passed and unknown.checks["vs_champion.accuracy_drop_points"].skipped
    # size needs no data: still compared; and the same data and split are compared as before
    larger = compare_to_champion(candidate | SAME | {"data_sha256": "cd" * 32, "size_bytes": 9_000_000}, champion, cfg)
    assert larger.failed() == ["vs_champion.size_growth"]
    assert compare_to_champion(candidate | SAME, champion, cfg).failed() == ["vs_champion.accuracy_drop_points"]


def test_the_causal_lm_champion_check_follows_the_same_rule():
    from components.config import LMGateConfig
    from components.kit.gate import compare_lm_to_champion

    champion = {"perplexity": 20.0, "size_bytes": 10e6, **SAME}
    candidate = {"perplexity": 40.0, "size_bytes": 10e6}
    assert compare_lm_to_champion(candidate | SAME, champion, LMGateConfig()).failed() == [
        "vs_champion.perplexity_growth"
    ]
    other = compare_lm_to_champion(candidate | SAME | {"data_sha256": "cd" * 32}, champion, LMGateConfig())
    assert other.passed and other.checks["vs_champion.perplexity_growth"].note.startswith("champion measured on other")


def test_the_champion_is_remeasured_only_on_the_candidates_own_data():
    from components.kit.gate import should_remeasure

    champion = {"accuracy": 0.9, **SAME, "data_sha256": "cd" * 32}
    assert should_remeasure(SAME, champion, data_at_hand=SAME["data_sha256"])
    assert not should_remeasure(SAME, champion, data_at_hand="ef" * 32)  # the workspace holds other data
    assert not should_remeasure(SAME, champion, data_at_hand=None)
    assert not should_remeasure(SAME, dict(SAME), data_at_hand=SAME["data_sha256"])  # already alike
    assert not should_remeasure({"data_sha256": SAME["data_sha256"]}, champion, SAME["data_sha256"])  # split unknown


def test_a_figure_not_measured_fails_its_check_with_a_note_and_no_crash():
    ratios = compare_to_teacher(entry(0.9), entry(None, 20_000_000, 2.0))  # an empty test split: accuracy None
    assert math.isnan(ratios["accuracy_drop_points"])
    d = decide(ratios, CFG)
    assert d.failed() == ["accuracy_drop_points"]
    assert d.checks["accuracy_drop_points"].note.startswith("not available")
    assert d.as_dict()["checks"]["accuracy_drop_points"]["value"] is None
    from components.kit.gate import compare_to_champion

    missing = compare_to_champion(
        {"accuracy": None, "size_bytes": 1.0, **SAME}, {"accuracy": 0.9, "size_bytes": 1.0, **SAME}, GateConfig()
    )
    assert missing.failed() == ["vs_champion.accuracy_drop_points"]
    assert not missing.checks["vs_champion.accuracy_drop_points"].skipped
