"""The accuracy budget the student chain spends on validation, and whether a candidate is within it.

A candidate (a distilled student, a pruning step) is compared with the teacher on the same validation
sentences. Its *spent* points are the teacher's validation score less its own. It is within the budget when
the spent points are at most `points`, and, with a `confidence`, also when the one-sided upper bound of the
spent points at that confidence stays within `points + margin_points`: spent + z x the standard error of the
paired difference, estimated by drawing the validation rows with replacement (`draws` times, the same rows
for teacher and candidate, so the sentences both get right or both get wrong cancel out).

Why the bound: on a small validation split the point estimate moves by several points from one split to the
next, and every decision of the chain (early stopping, the student's depth, each pruning step, the
quantization variant) is read from the same sentences. Measured on a user's 4-class set with 440 validation
sentences: the point estimate said the shipped model was 0.68 points below the teacher, test said 2.05 (and
5.01 for another seed). The bound leaves a small split little to spend and a large one almost its whole
budget (docs/stages.md, "The accuracy budget").

Pure numpy, no torch: `python -c "from components.kit.budget import AccuracyBudget"`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

Score = Callable[[np.ndarray, np.ndarray], float]  # (logits, labels) -> accuracy in 0..1


@dataclass(frozen=True)
class Spent:
    """What a candidate spent against the teacher on validation, in points."""

    points: float  # the teacher's validation score less the candidate's
    bound: float | None  # the one-sided upper bound at the budget's confidence; None without one
    within: bool

    def describe(self) -> str:
        bound = "" if self.bound is None else f" (upper bound {self.bound:.2f})"
        return f"{self.points:+.2f} points{bound}"


def paired_se_points(
    score: Score,
    reference: np.ndarray,
    candidate: np.ndarray,
    labels: np.ndarray,
    draws: int = 1000,
    seed: int = 0,
) -> float:
    """Standard error (points) of score(reference) - score(candidate) over the rows, by the bootstrap: the
    rows drawn with replacement, the same rows for both. `score` is any accuracy of (logits, labels), so a
    multitask model's mean accuracy over tasks is served the same way."""
    n = len(labels)
    if n < 2:
        return 0.0
    rng = np.random.default_rng(seed)
    differences = np.empty(draws)
    for i in range(draws):
        rows = rng.integers(0, n, size=n)
        differences[i] = score(reference[rows], labels[rows]) - score(candidate[rows], labels[rows])
    return 100.0 * float(differences.std(ddof=1))


@dataclass(frozen=True)
class AccuracyBudget:
    """Validation points a candidate may spend against the teacher."""

    points: float  # the point estimate's budget
    margin_points: float = 0.0  # the bound may go this much further (the budget was cut by it for noise)
    confidence: float | None = None  # one-sided confidence of the bound; None: the point estimate alone
    draws: int = 1000

    def describe(self) -> str:
        """The budget as a progress line gives it: "1.25 points (upper bound at 95% within 1.50)"."""
        if self.confidence is None:
            return f"{self.points:.2f} points"
        return f"{self.points:.2f} points (upper bound at {self.confidence:.0%} within {self.points + self.margin_points:.2f})"

    def standard_error(
        self, score: Score, teacher: np.ndarray, candidate: np.ndarray, labels: np.ndarray
    ) -> float | None:
        """The paired standard error (points) of the teacher's score less the candidate's, both validation
        logits; None when the budget has no confidence (no bound to draw)."""
        if self.confidence is None:
            return None
        return paired_se_points(score, teacher, candidate, labels, self.draws)

    def judge(self, spent_points: float, se_points: float | None) -> Spent:
        """Whether a candidate that spent `spent_points` (with that standard error) is within the budget."""
        within = spent_points <= self.points + 1e-9
        if self.confidence is None or se_points is None:
            return Spent(spent_points, None, within)
        bound = spent_points + NormalDist().inv_cdf(self.confidence) * se_points
        return Spent(spent_points, bound, within and bound <= self.points + self.margin_points + 1e-9)

    def spent(self, score: Score, teacher: np.ndarray, candidate: np.ndarray, labels: np.ndarray) -> Spent:
        """How many points `candidate` spent against `teacher` (both validation logits) and whether it is
        within the budget."""
        spent = 100.0 * (score(teacher, labels) - score(candidate, labels))
        return self.judge(spent, self.standard_error(score, teacher, candidate, labels))


def accuracy_budget(
    points: float | str | None, margin_points: float, confidence: float | None
) -> AccuracyBudget | None:
    """The budget of a prune section whose `accuracy_budget_points` is resolved (a number, or None: no budget)."""
    if points is None:
        return None
    if points == "auto":
        raise ValueError("prune.accuracy_budget_points is 'auto': resolve it first (flows.tasks.chain.prune_settings)")
    return AccuracyBudget(float(points), margin_points, confidence)
