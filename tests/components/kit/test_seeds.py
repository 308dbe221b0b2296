import pytest

from components.kit.seeds import spread, summarise


def test_spread_of_one_value_has_no_deviation():
    assert spread([2.0]) == {"mean": 2.0, "std": 0.0, "min": 2.0, "max": 2.0, "n": 1}
    assert spread([1.0, 3.0])["std"] == pytest.approx(2**0.5)


def test_summarise_puts_the_runs_own_seed_first_and_measures_drops_in_points():
    teacher = {"accuracy": 0.88, "agreement_with_teacher": 1.0}
    baseline = {"accuracy": 0.87, "agreement_with_teacher": 0.95}
    final = {"accuracy": 0.89, "agreement_with_teacher": 0.93}
    extra = [
        {"seed": 14, "accuracy": 0.86, "agreement_with_teacher": 0.91, "quantization": "fused_int8"},
        {"seed": 15, "accuracy": 0.87, "agreement_with_teacher": 0.92, "quantization": "fused_int8"},
    ]
    out = summarise(13, final, teacher, baseline, extra)
    assert [r["seed"] for r in out["runs"]] == [13, 14, 15]
    assert [round(r["accuracy_drop_points"], 6) for r in out["runs"]] == [-1.0, 2.0, 1.0]
    assert out["accuracy_drop_points"]["mean"] == pytest.approx(2.0 / 3)
    assert out["accuracy_drop_vs_baseline_points"]["mean"] == pytest.approx(-1.0 / 3)
    assert out["agreement_with_teacher"]["min"] == 0.91
    assert "accuracy_drop_vs_baseline_points" not in summarise(13, final, teacher, None, extra)
