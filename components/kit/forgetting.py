"""The incremental-learning gate: may a model updated on a new batch replace the champion?

An update must learn the new batch without forgetting the earlier ones. The caller measures the champion
(`before`) and the updated model (`after`) on each batch's held-out sentences, as accuracies in 0..1, and:

- `per_batch` lines them up, one row per batch, with the change in percentage points and, where the caller
  has each sentence's outcome (`paired_change`), how many sentences went right to wrong and wrong to right,
  with the exact McNemar p-value: on a few hundred test sentences a 1-point drop can be a handful of
  sentences, and the report should say when a change is within what chance moves;
- `forgetting_points` is the largest drop on any EARLIER batch (the new batch cannot be forgotten);
- `decide` checks it against `max_forgetting_points`, and the new batch's accuracy against
  `min_new_batch_accuracy`, as a `GateDecision` like the release gate's (`components.kit.gate`);
- `reason` says in one line why an update was refused, naming the batch it forgot most;
- `champion_check`: an update started from another version than the current champion (`--from`) must not
  forget what the champion knows either: the same largest drop, against the champion on the batches it saw.

As in the release gate, a figure that could not be measured fails its check with a note: no update becomes
champion on a measurement nobody made.

Pure decisions, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from components.kit.gate import TOLERANCE, Check, GateDecision


def _figure(value: float | None) -> float | None:
    """float(value); None for a missing figure (None or NaN)."""
    return None if value is None or math.isnan(float(value)) else float(value)


def paired_change(before: Sequence[bool], after: Sequence[bool]) -> dict:
    """Two models on the same sentences (`before[i]`, `after[i]`: sentence i answered right): {"n", "lost"
    (right before, wrong after), "gained" (wrong before, right after), "p_value"}, the p-value of the exact
    McNemar test (two-sided binomial on the discordant sentences; 1.0 when there are none): how likely a
    change at least this large is when neither model is better."""
    from scipy.stats import binomtest

    if len(before) != len(after):
        raise ValueError(f"paired outcomes need the same sentences: {len(before)} before, {len(after)} after")
    lost = sum(1 for b, a in zip(before, after) if b and not a)
    gained = sum(1 for b, a in zip(before, after) if a and not b)
    p_value = 1.0 if lost + gained == 0 else float(binomtest(lost, lost + gained).pvalue)
    return {"n": len(before), "lost": lost, "gained": gained, "p_value": p_value}


def per_batch(
    before: dict[str, float | None],
    after: dict[str, float | None],
    new_batch: str,
    paired: dict[str, dict] | None = None,
) -> list[dict]:
    """One row per batch of `after`, in its order: {"batch", "before", "after", "change_points", "new",
    "paired"}.

    "before" is the champion's accuracy (None where it has none, as for a batch it never saw), "after" the
    updated model's, "change_points" 100 * (after - before) (None when either is missing; positive: better),
    "new" whether it is `new_batch`. A batch the champion was measured on that is missing from `after` gets
    a row of its own at the end, with after None: otherwise an evaluation that skipped an earlier batch
    would hide its forgetting. "paired" is `paired[batch]` (`paired_change` of the two models on that batch),
    None where the caller has none.
    """
    rows = []
    for batch in list(after) + [b for b in before if b not in after]:
        was, now = _figure(before.get(batch)), _figure(after.get(batch))
        change = None if was is None or now is None else 100.0 * (now - was)
        rows.append(
            {
                "batch": batch,
                "before": was,
                "after": now,
                "change_points": change,
                "new": batch == new_batch,
                "paired": (paired or {}).get(batch),
            }
        )
    return rows


def p_value_text(p_value: float) -> str:
    """A p-value as a report prints it: two decimals, three below 0.01, "<0.001" below that."""
    if p_value < 0.001:
        return "<0.001"
    return f"{p_value:.3f}" if p_value < 0.01 else f"{p_value:.2f}"


def paired_text(paired: dict | None) -> str:
    """A batch's paired figures in words, e.g. 'on its 1,006 test sentences: 50 right to wrong, 33 wrong to
    right; McNemar p=0.08'; '' without them."""
    if not paired:
        return ""
    p_value = p_value_text(paired["p_value"])
    return (
        f"on its {paired['n']:,} test sentences: {paired['lost']} right to wrong, {paired['gained']} wrong to"
        f" right; McNemar p{'' if p_value.startswith('<') else '='}{p_value}"
    )


def _earlier(rows: list[dict]) -> list[dict]:
    return [row for row in rows if not row["new"]]


def unmeasured_batches(rows: list[dict]) -> list[str]:
    """The earlier batches whose change cannot be computed (a figure before or after is missing)."""
    return [row["batch"] for row in _earlier(rows) if row["change_points"] is None]


def forgetting_points(rows: list[dict]) -> float:
    """The largest accuracy drop on an earlier batch, in points (positive: worse); 0.0 when none dropped or
    there is no earlier batch; NaN when an earlier batch's change is missing."""
    if unmeasured_batches(rows):
        return math.nan
    drops = [-row["change_points"] for row in _earlier(rows)]
    return max([0.0, *drops])


def most_forgotten(rows: list[dict]) -> str | None:
    """The earlier batch with the largest drop (the first of equals); None when no earlier batch dropped."""
    measured = [row for row in _earlier(rows) if row["change_points"] is not None and row["change_points"] < 0]
    return min(measured, key=lambda row: row["change_points"])["batch"] if measured else None


def _new_row(rows: list[dict]) -> dict | None:
    return next((row for row in rows if row["new"]), None)


def decide(rows: list[dict], max_forgetting_points: float, min_new_batch_accuracy: float) -> GateDecision:
    """Two checks, in this order: "forgetting" (forgetting_points at most max_forgetting_points) and
    "new_batch_accuracy" (the new batch's accuracy in points at least 100 * min_new_batch_accuracy). A value
    equal to its threshold passes (within `TOLERANCE`); a missing figure fails, with a note naming it."""
    forgetting = forgetting_points(rows)
    threshold = float(max_forgetting_points)
    if math.isnan(forgetting):
        missing = ", ".join(unmeasured_batches(rows))
        note = f"no accuracy figure for earlier batch(es) {missing}: forgetting not measured"
        forgetting_check = Check(value=math.nan, threshold=threshold, passed=False, note=note)
    else:
        forgetting_check = Check(value=forgetting, threshold=threshold, passed=forgetting <= threshold + TOLERANCE)

    new = _new_row(rows)
    accuracy = None if new is None else new["after"]
    minimum = 100.0 * float(min_new_batch_accuracy)
    if accuracy is None:
        name = "the new batch" if new is None else f"the new batch {new['batch']}"
        note = f"no accuracy figure for {name}: not measured"
        accuracy_check = Check(value=math.nan, threshold=minimum, passed=False, note=note)
    else:
        points = 100.0 * accuracy
        accuracy_check = Check(value=points, threshold=minimum, passed=points >= minimum - TOLERANCE)
    return GateDecision.of({"forgetting": forgetting_check, "new_batch_accuracy": accuracy_check})


def reason(decision: GateDecision, rows: list[dict]) -> str:
    """One line: "passed", or each failed check with its value and threshold, e.g.
    "forgetting: 3.20 points on amazon > 1.00 allowed; new_batch_accuracy: 71.00 points on imdb < 80.00 required"."""
    if decision.passed:
        return "passed"
    parts = []
    for name in decision.failed():
        check = decision.checks[name]
        if not math.isfinite(check.value):
            parts.append(f"{name}: {check.note or 'not measured'}")
        elif name == "forgetting":
            worst = most_forgotten(rows)  # None only below a negative threshold, when no batch dropped
            where = f" on {worst}" if worst else ""
            row = next((r for r in rows if r["batch"] == worst), None) if worst else None
            parts.append(
                f"forgetting: {check.value:.2f} points{where} > {check.threshold:.2f} allowed"
                + (f" ({paired_text(row['paired'])})" if row and row.get("paired") else "")
            )
        elif name == "new_batch_accuracy":
            new = _new_row(rows)
            batch = new["batch"] if new else "the new batch"
            parts.append(f"new_batch_accuracy: {check.value:.2f} points on {batch} < {check.threshold:.2f} required")
        else:
            where = f" ({check.note})" if check.note else ""
            parts.append(f"{name}: {check.value:.2f} against {check.threshold:.2f}{where}")
    return "; ".join(parts)


def champion_check(
    champion: dict[str, float | None], after: dict[str, float | None], max_forgetting_points: float
) -> Check:
    """The largest drop of the updated model (`after`) against the current champion on every batch the
    champion was measured on (`champion`), in points, checked against `max_forgetting_points`; a batch
    without a figure fails the check with a note."""
    rows = per_batch(champion, {b: after.get(b) for b in champion}, new_batch="")
    value = forgetting_points(rows)
    threshold = float(max_forgetting_points)
    if math.isnan(value):
        note = f"no accuracy figure for {', '.join(unmeasured_batches(rows))}: not compared with the champion"
        return Check(value=math.nan, threshold=threshold, passed=False, note=note)
    worst = most_forgotten(rows)
    note = f"largest drop on {worst} against the current champion" if worst else ""
    return Check(value=value, threshold=threshold, passed=value <= threshold + TOLERANCE, note=note)
