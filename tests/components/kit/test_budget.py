import numpy as np
import pytest

from components.kit.budget import AccuracyBudget, accuracy_budget, paired_se_points
from components.kit.modeling import accuracy


def logits_from(correct: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Two-class logits that get each row right where `correct` says."""
    predicted = np.where(correct, labels, 1 - labels)
    return np.eye(2, dtype=np.float32)[predicted]


def test_identical_predictions_have_no_standard_error():
    labels = np.arange(200) % 2
    same = logits_from(np.arange(200) % 5 != 0, labels)
    assert paired_se_points(accuracy, same, same, labels) == 0.0


def test_the_bootstrap_matches_the_paired_formula():
    # 1,000 rows; the teacher alone right on 40 of them, the candidate alone right on 20
    labels, n = np.arange(1000) % 2, 1000
    teacher_right, candidate_right = np.ones(n, bool), np.ones(n, bool)
    teacher_right[:20] = False
    candidate_right[20:60] = False
    d = teacher_right.astype(float) - candidate_right
    analytic = 100 * d.std(ddof=1) / np.sqrt(n)  # about 0.24 points
    se = paired_se_points(
        accuracy, logits_from(teacher_right, labels), logits_from(candidate_right, labels), labels, draws=4000
    )
    assert se == pytest.approx(analytic, rel=0.1)


def test_a_ten_times_larger_split_has_about_a_third_of_the_error():
    # the same shares on 400 rows and on 4,000: the teacher alone right on 3%, the candidate alone on 3%
    def se(n):
        labels, right_t, right_c = np.arange(n) % 2, np.ones(n, bool), np.ones(n, bool)
        right_t[: 3 * n // 100], right_c[3 * n // 100 : 6 * n // 100] = False, False
        return paired_se_points(accuracy, logits_from(right_t, labels), logits_from(right_c, labels), labels)

    assert se(400) / se(4000) == pytest.approx(np.sqrt(10), rel=0.2)


def test_a_candidate_within_the_points_but_not_the_bound_is_over():
    budget = AccuracyBudget(points=1.25, margin_points=0.25, confidence=0.95)
    assert budget.judge(0.5, 0.2).within  # 0.5 + 1.645 x 0.2 = 0.83 <= 1.5
    over = budget.judge(0.5, 1.0)  # 0.5 + 1.645 = 2.14 > 1.5
    assert not over.within and over.bound == pytest.approx(2.145, abs=1e-3)
    assert not budget.judge(1.3, 0.0).within  # the point estimate alone is over


def test_without_a_confidence_the_point_estimate_decides():
    budget = AccuracyBudget(points=1.0)
    assert budget.standard_error(accuracy, np.zeros((2, 2)), np.zeros((2, 2)), np.zeros(2, int)) is None
    spent = budget.judge(0.9, None)
    assert spent.within and spent.bound is None and spent.describe() == "+0.90 points"


def test_spent_scores_both_models_on_the_same_rows():
    labels = np.arange(400) % 2
    teacher = logits_from(np.ones(400, bool), labels)
    candidate = logits_from(np.arange(400) >= 8, labels)  # 8 rows wrong: 2.0 points
    spent = AccuracyBudget(points=5.0, margin_points=0.0, confidence=0.95).spent(accuracy, teacher, candidate, labels)
    assert spent.points == pytest.approx(2.0) and spent.bound > spent.points and spent.within


def test_a_budget_from_the_prune_section():
    assert accuracy_budget(None, 0.25, 0.95) is None
    assert accuracy_budget(1.25, 0.25, None) == AccuracyBudget(1.25, 0.25, None)
    with pytest.raises(ValueError, match="prune_settings"):
        accuracy_budget("auto", 0.25, 0.95)
