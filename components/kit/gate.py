"""The release gate: compare the final model with the teacher and decide whether it may ship.

Pure decisions, no I/O. `compare_to_teacher` turns two model entries of the compression report into
ratios; `decide` checks the ratios against `GateConfig`; `compare_to_champion` checks a candidate against
the version that is champion now, so no promotion makes production worse. The evaluate stage writes the decision into the
report, and the register stage reads it back before moving any alias.

The causal-lm task has its own three: `compare_lm_to_teacher` (size, perplexity, BLEU and generation
speed ratios), `decide_lm` against `LMGateConfig` and `compare_lm_to_champion` (perplexity and size).

A value that is not a finite number (NaN from a missing entry, inf from a zero measurement) fails its
check, with a note saying so: the gate never passes a model on a measurement it could not make.

The champion checks compare like with like. Each figure carries its provenance (`data_sha256`, the hash
of the data it was measured on, and `split`); `measured_alike` says whether two figures may be compared.
When they may not, the register flow re-measures the champion on the candidate's split where it holds
that data (`should_remeasure`); otherwise the quality check is skipped (it passes, with the reason as its
note), since a figure from other data says nothing about which model is better. Size needs no data and is
always compared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from components.config import SPLITS, GateConfig, LMGateConfig

# Slack for float noise, so a value equal to its threshold passes: 100 * (0.91 - 0.89) is 2.0000000000000018.
TOLERANCE = 1e-9
NOT_MEASURED = "not available: a figure it needs was not measured"


@dataclass(frozen=True)
class Check:
    value: float
    threshold: float
    passed: bool
    note: str = ""  # why a check failed without a number, or why it was skipped

    @property
    def skipped(self) -> bool:
        return self.passed and not math.isfinite(self.value)


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    checks: dict[str, Check]

    @classmethod
    def of(cls, checks: dict[str, Check]) -> GateDecision:
        """Passed when every check passed."""
        return cls(passed=all(c.passed for c in checks.values()), checks=checks)

    def failed(self) -> list[str]:
        """Names of the checks that did not pass, in check order."""
        return [name for name, check in self.checks.items() if not check.passed]

    def as_dict(self) -> dict:
        """JSON-ready: a value that is not a finite number becomes None (the note says why)."""
        return {
            "passed": self.passed,
            "checks": {
                name: {
                    "value": c.value if math.isfinite(c.value) else None,
                    "threshold": c.threshold,
                    "passed": c.passed,
                    "note": c.note,
                }
                for name, c in self.checks.items()
            },
        }


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, with inf (or NaN for 0/0) instead of ZeroDivisionError."""
    numerator, denominator = float(numerator), float(denominator)
    if denominator == 0.0:
        return math.nan if numerator == 0.0 or math.isnan(numerator) else math.inf
    return numerator / denominator


def _number(value) -> float:
    """float(value), NaN for a missing value (None: a measurement the report could not make)."""
    return math.nan if value is None else float(value)


def compare_to_teacher(teacher: dict, final: dict) -> dict:
    """Ratios of two report model entries: above 1 means the final model is smaller / faster.

    accuracy_drop_points is teacher minus final accuracy, in percentage points (negative: final is better);
    NaN when either accuracy is missing (None: an empty test split).
    """
    teacher_latency, final_latency = teacher["latency_ms"], final["latency_ms"]
    return {
        "size_ratio": _ratio(teacher["size_bytes"], final["size_bytes"]),
        "speedup_batch1_p50": _ratio(teacher_latency["batch1_p50"], final_latency["batch1_p50"]),
        "speedup_batch32_p50": _ratio(teacher_latency["batch32_p50"], final_latency["batch32_p50"]),
        "accuracy_drop_points": 100.0 * (_number(teacher.get("accuracy")) - _number(final.get("accuracy"))),
    }


def _check(value, threshold: float, at_most: bool) -> Check:
    value = _number(value)
    within = value <= threshold + TOLERANCE if at_most else value >= threshold - TOLERANCE
    passed = bool(math.isfinite(value) and within)
    note = "" if math.isfinite(value) else NOT_MEASURED if math.isnan(value) else "not a finite number"
    return Check(value=value, threshold=float(threshold), passed=passed, note=note)


def _skipped(threshold: float, reason: str) -> Check:
    return Check(value=math.nan, threshold=float(threshold), passed=True, note=reason)


def measured_alike(candidate: dict, champion: dict) -> str | None:
    """None when both figures were measured on the same data (`data_sha256`) and `split`; otherwise the
    reason they are not compared. Unknown provenance (an older version's missing tag) is not alike."""
    data = [f.get("data_sha256") or None for f in (candidate, champion)]
    split = [f.get("split") or None for f in (candidate, champion)]
    if None in data or data[0] != data[1]:
        return "champion measured on other data: not compared"
    if None in split or split[0] != split[1]:
        return (
            f"champion measured on the {split[1] or 'unknown'} split, candidate on the {split[0] or 'unknown'} "
            f"split: not compared"
        )
    return None


def should_remeasure(candidate: dict, champion: dict, data_at_hand: str | None) -> bool:
    """Re-measure the champion when its figure is not like the candidate's and the data the candidate was
    measured on is the data at hand (its sha256), with a known split: then both come from one measurement."""
    return (
        measured_alike(candidate, champion) is not None
        and data_at_hand is not None
        and candidate.get("data_sha256") == data_at_hand
        and candidate.get("split") in SPLITS
    )


def compare_to_champion(candidate: dict, champion: dict, cfg: GateConfig) -> GateDecision:
    """Is the candidate no worse than the current champion beyond tolerance?

    Both are {"accuracy": 0..1, "size_bytes": n, "data_sha256": ..., "split": ...} of the final model.
    Accuracy is compared only when `measured_alike`; size always. Latency is left out on purpose: two runs'
    timings on a shared machine differ by more than the models do, while each version's speedup over its
    teacher is already checked by `decide`.
    """
    drop = 100.0 * (_number(champion.get("accuracy")) - _number(candidate.get("accuracy")))
    return _vs_champion(
        candidate,
        champion,
        "vs_champion.accuracy_drop_points",
        drop,
        cfg.max_drop_vs_champion_points,
        cfg.max_size_growth_vs_champion,
    )


def _vs_champion(
    candidate: dict, champion: dict, quality_check: str, quality: float, max_quality: float, max_size_growth: float
) -> GateDecision:
    """The quality figure (lower is better) against `max_quality` when `measured_alike`, skipped with the reason
    otherwise; the candidate's size over the champion's against `max_size_growth`, always."""
    unlike = measured_alike(candidate, champion)
    growth = _ratio(_number(candidate.get("size_bytes")), _number(champion.get("size_bytes")))
    return GateDecision.of(
        {
            quality_check: _skipped(max_quality, unlike) if unlike else _check(quality, max_quality, at_most=True),
            "vs_champion.size_growth": _check(growth, max_size_growth, at_most=True),
        }
    )


def combine(*decisions: GateDecision) -> GateDecision:
    return GateDecision.of({name: check for d in decisions for name, check in d.checks.items()})


def decide(ratios: dict, cfg: GateConfig) -> GateDecision:
    """Every check must pass; a missing ratio counts as NaN and fails its check."""
    return GateDecision.of(
        {
            "accuracy_drop_points": _check(
                ratios.get("accuracy_drop_points"), cfg.max_drop_vs_teacher_points, at_most=True
            ),
            "size_ratio": _check(ratios.get("size_ratio"), cfg.min_size_ratio, at_most=False),
            "speedup_batch1_p50": _check(ratios.get("speedup_batch1_p50"), cfg.min_speedup, at_most=False),
        }
    )


def decide_multitask(
    vs_teacher: dict, vs_single_tasks: dict | None, cfg: GateConfig, max_drop_vs_single_points: float
) -> GateDecision:
    """The classification checks against the teacher (`decide`), its accuracy drop being the worst task's,
    and, when the single-task baseline ran, the worst task's drop against its single-task student: its mean
    over seeds when the seeds stage re-trained the chains (one seed's drop on a test split of a few thousand
    sentences moves by tenths of a point), else the one run's."""
    checks = dict(decide(vs_teacher, cfg).checks)
    if vs_single_tasks is not None:
        drop = vs_single_tasks.get("accuracy_drop_points_seed_mean", vs_single_tasks.get("accuracy_drop_points"))
        checks["accuracy_drop_vs_single_task_points"] = _check(drop, max_drop_vs_single_points, at_most=True)
    return GateDecision.of(checks)


# ---------------------------------------------------------------- causal-lm


def compare_lm_to_teacher(teacher: dict, final: dict) -> dict:
    """Ratios of two causal-lm report entries, oriented so that above 1 is better for the final model where
    it is a ratio: size_ratio (teacher / final bytes), generation_speedup (final / teacher tokens per
    second); perplexity_ratio is final / teacher perplexity (above 1: worse) and bleu_drop_points is
    teacher minus final BLEU (positive: worse). A missing value gives NaN."""
    return {
        "size_ratio": _ratio(_number(teacher.get("size_bytes")), _number(final.get("size_bytes"))),
        "perplexity_ratio": _ratio(_number(final.get("perplexity")), _number(teacher.get("perplexity"))),
        "bleu_drop_points": _number(teacher.get("bleu")) - _number(final.get("bleu")),
        "generation_speedup": _ratio(_number(final.get("tokens_per_s")), _number(teacher.get("tokens_per_s"))),
    }


def decide_lm(ratios: dict, cfg: LMGateConfig) -> GateDecision:
    """Every check must pass; a missing or non-finite ratio fails its check."""
    return GateDecision.of(
        {
            "perplexity_ratio": _check(ratios.get("perplexity_ratio"), cfg.max_perplexity_ratio, at_most=True),
            "bleu_drop_points": _check(ratios.get("bleu_drop_points"), cfg.max_bleu_drop_points, at_most=True),
            "generation_speedup": _check(ratios.get("generation_speedup"), cfg.min_generation_speedup, at_most=False),
            "size_ratio": _check(ratios.get("size_ratio"), cfg.min_size_ratio, at_most=False),
        }
    )


def compare_lm_to_champion(candidate: dict, champion: dict, cfg: LMGateConfig) -> GateDecision:
    """Is the candidate causal LM no worse than the current champion beyond tolerance?

    Both are {"perplexity": ..., "size_bytes": n, "data_sha256": ..., "split": ...} of the final model; as in
    `compare_to_champion`, perplexity is compared only when `measured_alike`, and speed is left out: it is
    checked against each version's own teacher.
    """
    growth = _ratio(_number(candidate.get("perplexity")), _number(champion.get("perplexity")))
    return _vs_champion(
        candidate,
        champion,
        "vs_champion.perplexity_growth",
        growth,
        cfg.max_perplexity_growth_vs_champion,
        cfg.max_size_growth_vs_champion,
    )
