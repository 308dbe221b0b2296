"""Stage, validate: check the prepared splits with Great Expectations before any training.

`run(cfg, prepared, out_dir, tracker)` reads `train/validation/test.parquet` and `data_card.json` from
`prepared`, runs one GX suite per split on the rows (schema, nulls, text length, label set, duplicates,
train overlap) and one on a small per-class summary (class share), and always writes
`out_dir/validation.json`: the GX results per split plus a summary of failed and skipped checks with
example rows. It returns a `StageResult` when every check passes and raises `ValidationFailed` (after
writing and logging the report) when any fails.

A multitask split (its data card names `tasks`, each with a label column and its labels) has no `label`
column: the label checks (label set, distinct labels, class share) run once per task, on the rows that have
a label for it, and every row must have a label for at least one task (`has_a_label`).

Checks that need a missing column are skipped with a reason instead of crashing; the schema failure
that caused the skip is reported first. Great Expectations is imported inside the functions that use
it (about 6 s), so importing this module does nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from components.config import SPLITS, ValidateConfig
from components.kit.text import text_key  # the same form ingest de-duplicates by
from components.kit.tracking import StageResult, Tracker

# Every check this stage can emit, in the order failures are reported (the headline first).
CHECKS = (
    "schema",
    "not_empty",
    "text_is_string",
    "not_null",
    "text_length",
    "has_a_label",
    "label_in_set",
    "distinct_labels",
    "class_share",
    "duplicate_rate",
    "train_overlap",
)
EXAMPLE_CHARS = 80  # example texts and labels are cut to this many characters


class ValidationFailed(Exception):
    """Some data checks failed; `.report_path` is the written validation.json, `.failures` its failures."""

    def __init__(self, message: str, report_path: Path, failures: list[dict] | None = None):
        super().__init__(message)
        self.report_path = Path(report_path)
        self.failures = list(failures or [])


# --- deciding: which frames and expectations -------------------------------------------------------


def rows_frame(frame: pd.DataFrame, train_keys: set[str] | None) -> pd.DataFrame:
    """The frame GX validates for a split: `text`/`label` as given plus derived columns.

    `text_chars` is the stripped length (NaN where the text is null or not a string, which other checks
    report), `text_key` the comparison form, and `in_train` whether the text also occurs in train.
    """
    out = frame[[c for c in ("text", "label") if c in frame.columns]].reset_index(drop=True)
    if "text" in out.columns:
        stripped = [len(v.strip()) if isinstance(v, str) else None for v in out["text"]]
        out["text_chars"] = pd.Series(stripped, dtype="float64")
        out["text_key"] = pd.Series([text_key(v) for v in out["text"]], dtype="object")
        if train_keys is not None:
            out["in_train"] = [key is not None and key in train_keys for key in out["text_key"]]
    return out


def class_share_frame(labels: pd.Series, expected: list[str]) -> pd.DataFrame:
    """One row per expected label: its row count and share of the split (0 when absent)."""
    counts = labels.value_counts()
    total = len(labels)
    rows = [(label, int(counts.get(label, 0)), counts.get(label, 0) / total if total else 0.0) for label in expected]
    return pd.DataFrame(rows, columns=["label", "count", "share"])


def resolve_labels(expected: list[str] | None, card: dict, train: pd.DataFrame) -> list[str]:
    """Configured labels, else the data card's, else the labels seen in train."""
    if expected:
        return list(expected)
    if card.get("labels"):
        return list(card["labels"])
    if "label" in train.columns:
        return sorted(str(v) for v in train["label"].dropna().unique())
    return []


def plan_checks(
    split: str,
    columns: set[str],
    n_rows: int,
    cfg: ValidateConfig,
    labels: list[str],
    train_columns: set[str],
    text_only: bool = False,
) -> tuple[list[tuple[str, str, Callable]], list[dict]]:
    """The row-level checks for one split as (check, column, expectation factory), and those skipped.

    A check is skipped, with a reason, when a column it needs is missing; the missing column itself
    fails the `schema` check. `text_only` (a language-modelling corpus) plans no label checks at all.
    """
    import great_expectations as gx

    ex = gx.expectations
    # (check, column, columns needed, factory); factories so nothing is built for skipped checks.
    wanted: list[tuple[str, str, tuple[str, ...], Callable]] = [
        ("schema", "text", (), lambda: ex.ExpectColumnToExist(column="text")),
        ("schema", "label", (), lambda: ex.ExpectColumnToExist(column="label")),
        ("not_empty", "", (), lambda: ex.ExpectTableRowCountToBeBetween(min_value=1)),
        ("text_is_string", "text", ("text",), lambda: ex.ExpectColumnValuesToBeOfType(column="text", type_="str")),
        ("not_null", "text", ("text",), lambda: ex.ExpectColumnValuesToNotBeNull(column="text")),
        ("not_null", "label", ("label",), lambda: ex.ExpectColumnValuesToNotBeNull(column="label")),
        (
            "text_length",
            "text",
            ("text",),
            lambda: ex.ExpectColumnValuesToBeBetween(
                column="text_chars", min_value=cfg.min_chars, max_value=cfg.max_chars
            ),
        ),
        (
            "label_in_set",
            "label",
            ("label", "labels"),
            lambda: ex.ExpectColumnValuesToBeInSet(column="label", value_set=list(labels)),
        ),
        (
            "duplicate_rate",
            "text",
            ("text", "rows"),
            lambda: ex.ExpectColumnProportionOfUniqueValuesToBeBetween(
                column="text_key", min_value=1.0 - cfg.max_duplicate_rate
            ),
        ),
    ]
    if split == "train":
        wanted.append(
            (
                "distinct_labels",
                "label",
                ("label",),
                lambda: ex.ExpectColumnUniqueValueCountToBeBetween(column="label", min_value=2),
            )
        )
    else:
        wanted.append(
            (
                "train_overlap",
                "text",
                ("text", "train:text"),
                lambda: ex.ExpectColumnValuesToBeInSet(column="in_train", value_set=[False]),
            )
        )

    if text_only:
        wanted = [w for w in wanted if w[1] != "label"]
    planned, skipped = [], []
    for check, column, needs, factory in wanted:
        reason = missing_reason(needs, columns, n_rows, labels, train_columns)
        if reason:
            skipped.append({"split": split, "check": check, "column": column, "reason": reason})
        else:
            planned.append((check, column, factory))
    return planned, skipped


def with_meta(check: str, column: str, expectation):
    expectation.meta = {"check": check, "column": column}
    return expectation


def class_share_check(cfg: ValidateConfig):
    """Every expected label holds at least `min_class_share` of the split (checked on the summary frame)."""
    import great_expectations as gx

    expectation = gx.expectations.ExpectColumnValuesToBeBetween(
        column="share", min_value=cfg.min_class_share, max_value=1.0
    )
    return with_meta("class_share", "label", expectation)


def missing_reason(
    needs: tuple[str, ...], columns: set[str], n_rows: int, labels: list[str], train_columns: set[str]
) -> str:
    for need in needs:
        if need == "labels" and not labels:
            return "no expected label set (not configured, not in the data card, none in train)"
        if need == "rows" and n_rows == 0:
            return "split is empty"
        if need == "train:text" and "text" not in train_columns:
            return "column 'text' is missing in train"
        if need in ("text", "label") and need not in columns:
            return f"column {need!r} is missing"
    return ""


# --- acting: run GX ------------------------------------------------------------------------------


def open_context():
    """An in-memory GX context (no files, no analytics, no progress bars) and its dataframe batch."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    batch = (
        context.data_sources.add_pandas("prepared")
        .add_dataframe_asset("frame")
        .add_batch_definition_whole_dataframe("whole")
    )
    return context, batch


def run_suite(context, batch, name: str, frame: pd.DataFrame, expectations: list, examples: int):
    """Validate `frame` against the expectations; SUMMARY keeps the offending row indices."""
    import great_expectations as gx

    suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
    result_format = {"result_format": "SUMMARY", "partial_unexpected_count": max(examples, 20)}
    return definition.run(batch_parameters={"dataframe": frame}, result_format=result_format)


# --- deciding: what failed, with examples ---------------------------------------------------------


def truncate(value: Any, limit: int = EXAMPLE_CHARS) -> Any:
    """A JSON-friendly example value, strings cut to `limit` characters."""
    if hasattr(value, "item") and not isinstance(value, str):  # numpy scalar -> Python scalar
        value = value.item()
    if isinstance(value, str) and len(value) > limit:
        return value[: limit - 3] + "..."
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    return value if isinstance(value, (str, int, float, bool)) else str(value)


def example_rows(frame: pd.DataFrame, indices: list[int], limit: int) -> list[dict]:
    rows = []
    for index in indices[:limit]:
        row = {"row": int(index)}
        for column in ("text", "label"):
            if column in frame.columns:
                row[column] = truncate(frame.at[index, column])
        rows.append(row)
    return rows


def duplicate_examples(frame: pd.DataFrame, limit: int) -> tuple[int, list[dict]]:
    """Duplicate rows (beyond the first of each text) and the most repeated texts."""
    keys = frame["text_key"].dropna()
    counts = keys.value_counts()
    repeated = counts[counts > 1]
    first_text = frame.loc[keys.index].groupby(keys)["text"].first()
    examples = [{"text": truncate(first_text[key]), "count": int(n)} for key, n in repeated.head(limit).items()]
    return int(len(keys) - len(counts)), examples


def describe_failure(split: str, item, frame: pd.DataFrame, source_columns: list[str], cfg: ValidateConfig) -> dict:
    """A failed GX result as a report entry: which check, where, how many and a few examples."""
    meta = item.expectation_config.meta or {}
    check, result = meta.get("check", "?"), item.result or {}
    failure = {
        "split": split,
        "check": check,
        "expectation_type": item.expectation_config.type,
        "column": meta.get("column", ""),
        "unexpected_count": result.get("unexpected_count"),
        "observed_value": result.get("observed_value"),
        "examples": [],
    }
    indices = result.get("partial_unexpected_index_list") or []
    limit = cfg.examples
    if check == "schema":
        failure["examples"] = [{"columns_present": ", ".join(map(str, source_columns)) or "(none)"}]
    elif check == "class_share":
        failure["unexpected_count"] = len(indices)
        failure["examples"] = [
            {
                "label": truncate(frame.at[i, "label"]),
                "count": int(frame.at[i, "count"]),
                "share": round(float(frame.at[i, "share"]), 4),
            }
            for i in indices[:limit]
        ]
    elif check == "duplicate_rate":
        failure["unexpected_count"], failure["examples"] = duplicate_examples(frame, limit)
    elif check == "distinct_labels":
        counts = frame["label"].value_counts()
        failure["examples"] = [{"label": truncate(k), "count": int(v)} for k, v in counts.head(limit).items()]
    elif check == "text_length":
        chars = frame["text_chars"]
        failure["lengths"] = {
            "empty": int((chars == 0).sum()),
            "too_short": int(((chars > 0) & (chars < cfg.min_chars)).sum()),
            "too_long": int((chars > cfg.max_chars).sum()),
        }
        failure["examples"] = example_rows(frame, indices, limit)
    elif check == "label_in_set":
        failure["expected"] = list(item.expectation_config.kwargs.get("value_set") or [])
        failure["examples"] = example_rows(frame, indices, limit)
    elif check == "text_is_string" and not indices:
        # Checked on the column dtype (not row by row) when the dtype is not `object`.
        failure["unexpected_count"] = len(frame)
        failure["examples"] = example_rows(frame, list(range(len(frame))), limit)
    else:
        failure["examples"] = example_rows(frame, indices, limit)
    failure["detail"] = failure_detail(failure, cfg)
    errors = exception_messages(item.exception_info or {})
    if errors:
        failure["error"] = "; ".join(errors)
    return failure


# How a failed check reads, for the checks that one phrase describes: formatted with the failure's
# `count` (unexpected rows) and `observed` value, the `failure` itself and the stage's `cfg`.
DETAILS = {
    "schema": "column is missing",
    "not_empty": "the split has no rows",
    "has_a_label": "{count} row(s) without a label for any task",
    "label_in_set": "{count} row(s) with a label outside the expected set {failure[expected]}",
    "train_overlap": "{count} row(s) whose text (case-folded) is also in train",
    "not_null": "{count} null value(s)",
    "distinct_labels": "{observed} distinct labels, need at least 2",
    "class_share": "{count} label(s) under the minimum share {cfg.min_class_share}",
}


def failure_detail(failure: dict, cfg: ValidateConfig) -> str:
    """One short phrase saying how the data missed the expectation."""
    check, count, observed = failure["check"], failure["unexpected_count"], failure["observed_value"]
    if check in DETAILS:
        return DETAILS[check].format(count=count, observed=observed, failure=failure, cfg=cfg)
    if check == "text_length":
        kinds = (
            (failure["lengths"]["empty"], "empty or whitespace-only"),
            (failure["lengths"]["too_short"], f"shorter than validate.min_chars={cfg.min_chars}"),
            (failure["lengths"]["too_long"], f"longer than validate.max_chars={cfg.max_chars}"),
        )
        return (
            f"{count} row(s) with a text outside {cfg.min_chars}..{cfg.max_chars} chars after stripping: "
            + ", ".join(f"{n} {what}" for n, what in kinds if n)
        )
    if check == "duplicate_rate":
        return f"{count} duplicate row(s), duplicate rate {1 - float(observed or 0):.3f} > {cfg.max_duplicate_rate}"
    if check == "text_is_string" and observed is not None:
        return f"column dtype is {observed}, not strings"
    if count is not None:
        return f"{count} unexpected row(s)"
    return f"observed {observed}"


def described(outcome) -> dict:
    """GX's own description of a suite run, each expectation tagged with the check it implements."""
    described = outcome.describe_dict()
    for entry, item in zip(described["expectations"], outcome.results):  # same order, by construction
        entry["check"] = (item.expectation_config.meta or {}).get("check")
    return described


def exception_messages(info: dict) -> list[str]:
    """GX puts one exception at the top level, or one per metric keyed by metric id."""
    if "raised_exception" in info:
        return [str(info.get("exception_message"))] if info["raised_exception"] else []
    return [str(v.get("exception_message")) for v in info.values() if isinstance(v, dict) and v.get("raised_exception")]


def order_failures(failures: list[dict]) -> list[dict]:
    return sorted(
        failures,
        key=lambda f: (
            CHECKS.index(f["check"]) if f["check"] in CHECKS else len(CHECKS),
            SPLITS.index(f["split"]) if f["split"] in SPLITS else len(SPLITS),
        ),
    )


def format_example(example: dict) -> str:
    if "row" in example:
        rest = " ".join(f"{k}={v!r}" for k, v in example.items() if k != "row")
        return f"row {example['row']}: {rest}"
    return " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in example.items())


def format_message(report: dict) -> str:
    """The multi-line summary a person reads first: failed checks, their examples, then skips."""
    lines = [f"data validation failed: {report['checks_failed']} of {report['checks_total']} checks"]
    for failure in report["failures"]:
        where = f" on column {failure['column']!r}" if failure["column"] else ""
        lines.append(
            f"  {failure['split']}: {failure['check']}{where} ({failure['expectation_type']}): {failure['detail']}"
        )
        if failure.get("error"):
            lines.append(f"      error: {truncate(failure['error'], 200)}")
        lines.extend(f"      {format_example(example)}" for example in failure["examples"])
    if report["skipped"]:
        lines.append(f"  skipped {len(report['skipped'])} checks:")
        lines.extend(f"      {s['split']}: {s['check']} on {s['column']!r} ({s['reason']})" for s in report["skipped"])
    lines.append(f"  full report: {report['report_path']}")
    return "\n".join(lines)


# --- the stage ------------------------------------------------------------------------------------


def read_prepared(prepared: Path) -> tuple[dict[str, pd.DataFrame], dict]:
    frames = {}
    for split in SPLITS:
        path = prepared / f"{split}.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"prepared split {path} does not exist; run the ingest stage first")
        frames[split] = pd.read_parquet(path)
    card_path = prepared / "data_card.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    return frames, card


def task_checks(context, batch, split: str, source: pd.DataFrame, tasks: dict, cfg: ValidateConfig):
    """The label checks of each task on the rows of a split that have its label, and `has_a_label` on all rows:
    (failures, skipped, GX results, checks run). `tasks` is {task: {"column": ..., "labels": [...]}}."""
    import great_expectations as gx

    failures, skipped, results, total = [], [], {}, 0
    columns = [t["column"] for t in tasks.values()]
    present = [c for c in columns if c in source.columns]
    counts = pd.DataFrame({"text": source.get("text"), "labels_present": source[present].notna().sum(axis=1)})
    check = gx.expectations.ExpectColumnValuesToBeBetween(column="labels_present", min_value=1)
    outcome = run_suite(
        context,
        batch,
        f"{split}_has_a_label",
        counts,
        [with_meta("has_a_label", ", ".join(columns), check)],
        cfg.examples,
    )
    results["has_a_label"], total = described(outcome), total + len(outcome.results)
    failures += [
        describe_failure(split, item, counts, list(source.columns), cfg) for item in outcome.results if not item.success
    ]
    for name, task in tasks.items():
        column, labels = task["column"], list(task["labels"])
        if column not in source.columns:
            skipped.append(
                {
                    "split": split,
                    "check": "label checks",
                    "column": column,
                    "reason": f"task {name}: column {column!r} is missing",
                }
            )
            continue
        rows = source[source[column].notna()]
        frame = pd.DataFrame({"text": rows.get("text"), "label": rows[column]})
        planned, _ = plan_checks(split, {"text", "label"}, len(frame), cfg, labels, set(), False)
        wanted = [(c, factory) for c, col, factory in planned if col == "label" and c not in ("schema", "not_null")]
        expectations = [with_meta(c, column, factory()) for c, factory in wanted]
        outcome = run_suite(context, batch, f"{split}_{name}_rows", frame, expectations, cfg.examples)
        shares = class_share_frame(frame["label"], labels)
        share_outcome = run_suite(
            context, batch, f"{split}_{name}_class_share", shares, [class_share_check(cfg)], cfg.examples
        )
        results[name] = {"rows": described(outcome), "class_share": described(share_outcome)}
        total += len(outcome.results) + len(share_outcome.results)
        for item, on in [*((i, frame) for i in outcome.results), *((i, shares) for i in share_outcome.results)]:
            if not item.success:
                failure = describe_failure(split, item, on, list(source.columns), cfg)
                failure["column"] = column
                failures.append(failure)
    return failures, skipped, results, total


def validate_splits(
    cfg: ValidateConfig,
    frames: dict[str, pd.DataFrame],
    labels: list[str],
    text_only: bool = False,
    tasks: dict | None = None,
) -> dict:
    """Run every check on every split; returns the report (success, counts, failures, skipped, GX results).
    With `tasks` (a multitask split) the label checks are `task_checks`'."""
    context, batch = open_context()
    train = frames["train"]
    train_columns = set(train.columns)
    train_keys = {k for k in map(text_key, train["text"]) if k is not None} if "text" in train_columns else None
    failures, skipped, gx_results, total = [], [], {}, 0
    for split, source in frames.items():
        columns = set(source.columns)
        frame = rows_frame(source, None if split == "train" else train_keys)
        planned, split_skipped = plan_checks(
            split, columns, len(frame), cfg, labels, train_columns, text_only or tasks is not None
        )
        skipped += split_skipped
        expectations = [with_meta(check, column, factory()) for check, column, factory in planned]
        outcome = run_suite(context, batch, f"{split}_rows", frame, expectations, cfg.examples)
        gx_results[split] = {"rows": described(outcome)}
        total += len(outcome.results)
        failures += [
            describe_failure(split, item, frame, list(source.columns), cfg)
            for item in outcome.results
            if not item.success
        ]

        if tasks is not None:
            task_failures, task_skipped, gx_results[split]["tasks"], task_total = task_checks(
                context, batch, split, source, tasks, cfg
            )
            failures, skipped, total = failures + task_failures, skipped + task_skipped, total + task_total
            continue
        if text_only:
            continue
        if "label" not in columns or not labels:
            reason = "column 'label' is missing" if "label" not in columns else "no expected label set"
            skipped.append({"split": split, "check": "class_share", "column": "label", "reason": reason})
            continue
        shares = class_share_frame(frame["label"], labels)
        outcome = run_suite(context, batch, f"{split}_class_share", shares, [class_share_check(cfg)], cfg.examples)
        gx_results[split]["class_share"] = described(outcome)
        total += len(outcome.results)
        failures += [
            describe_failure(split, item, shares, list(source.columns), cfg)
            for item in outcome.results
            if not item.success
        ]

    failures = order_failures(failures)
    return {
        "success": not failures,
        "checks_total": total,
        "checks_failed": len(failures),
        "checks_skipped": len(skipped),
        "expected_labels": labels,
        "failures": failures,
        "skipped": skipped,
        "gx": gx_results,
    }


def run(
    cfg: ValidateConfig,
    prepared: Path,
    out_dir: Path,
    tracker: Tracker,
    expected_labels: list[str] | None = None,
    text_only: bool = False,
) -> StageResult:
    """Validate the prepared splits; `text_only` for an unlabelled language-modelling corpus."""
    frames, card = read_prepared(Path(prepared))
    tasks = card.get("tasks")  # a multitask split: each task's column and labels
    labels = [] if text_only or tasks else resolve_labels(expected_labels, card, frames["train"])
    report = validate_splits(cfg, frames, labels, text_only, tasks)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report_path = out_dir / "validation.json"
    report["report_path"] = str(report_path)
    report_path.write_text(json.dumps(report, indent=2, default=str))
    metrics = {
        "checks_total": float(report["checks_total"]),
        "checks_failed": float(report["checks_failed"]),
        "checks_skipped": float(report["checks_skipped"]),
    }
    tracker.log_metrics(metrics)
    tracker.log_artifact(report_path)
    if not report["success"]:
        raise ValidationFailed(format_message(report), report_path, report["failures"])
    return StageResult(
        metrics=metrics, outputs={"report": report_path}, info={"expected_labels": labels, "skipped": report["skipped"]}
    )
