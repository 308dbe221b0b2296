"""Stage, export: turn a PyTorch sequence classifier into an ONNX model, and prove it computes the same.

`run(cfg, model_dir, prepared, out_dir, tracker)` exports `model_dir` (safetensors + tokenizer +
`labels.json`, possibly a BERT with pruned heads) with `optimum.exporters.onnx.main_export`, copies the
tokenizer and `labels.json` beside `model.onnx`, then runs ONNX Runtime and PyTorch over the whole test
split and compares logits. A max |delta logit| above `cfg.max_abs_logit_diff`, or any differing prediction,
raises `ExportCheckFailed` and leaves no `out_dir` behind: everything is written to a temporary sibling
folder that is renamed into place only once the check passed. `out_dir/export_check.json` records the check.

A multitask model (its config.json records `task_heads`, `components.kit.heads`) gets one output per task:
Optimum's single `logits` output is split on its last axis (`split_logits_output`, an ONNX `Split` node) into
`logits_<task>` in task order, so a caller reads each task's block by name. Each output is checked against
its block of the PyTorch logits (predictions compared per task); export_check.json keeps the overall figures
(the largest difference, the differing predictions summed over tasks) and adds
`outputs: {logits_<task>: {max_abs_logit_diff, mismatched_predictions, n, passed}}`, the tracker
`max_abs_logit_diff.<task>` and `mismatched_predictions.<task>`, and `ExportCheckFailed` names the outputs
that fail. A single-task export is untouched: one `logits` output, the same files and figures.

The ONNX helpers it shares with the quantize and seeds stages (`onnx_logits`, the folder's metadata) are in
`components.kit.onnx_models`, its sessions from `components.kit.latency.load_onnx_session`. Optimum, ONNX and
ONNX Runtime are imported inside functions only.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from components.config import ExportConfig
from components.kit.files import move_into_place, temp_sibling
from components.kit.heads import Heads
from components.kit.labelling import Labelling, model_labelling
from components.kit.latency import TASK_LOGITS_PREFIX, load_onnx_session
from components.kit.modeling import dir_size_bytes, encode_split, predict_logits
from components.kit.onnx_models import ONNX_FILE, copy_model_metadata, onnx_outputs, pad_id_of
from components.kit.sources import require_safetensors
from components.kit.tracking import StageResult, Tracker


class ExportCheckFailed(RuntimeError):
    """The exported ONNX model does not reproduce the PyTorch logits within tolerance."""


@dataclass(frozen=True)
class LogitCheck:
    max_abs_logit_diff: float
    mismatched_predictions: int
    n: int
    passed: bool


def compare_logits(reference: np.ndarray, candidate: np.ndarray, tolerance: float) -> LogitCheck:
    """Pass when every logit is within `tolerance` of the reference and every argmax is identical."""
    if reference.shape != candidate.shape:
        raise ValueError(f"logit shapes differ: reference {reference.shape}, candidate {candidate.shape}")
    n = len(reference)
    max_diff = float(np.abs(reference - candidate).max()) if reference.size else 0.0
    mismatched = int((reference.argmax(-1) != candidate.argmax(-1)).sum()) if n else 0
    # `<=` is False for NaN, so a NaN difference fails too.
    return LogitCheck(max_diff, mismatched, n, passed=bool(max_diff <= tolerance) and mismatched == 0)


def output_blocks(labelling: Labelling) -> dict[str, slice]:
    """{ONNX output: its block of the PyTorch logits}: one `logits` output for one label per row, one
    `logits_<task>` per task, in task order, for a multitask model."""
    if isinstance(labelling, Heads):
        return {f"{TASK_LOGITS_PREFIX}{task}": cut for task, cut in labelling.slices.items()}
    return {"logits": slice(None)}


def check_outputs(
    reference: np.ndarray, outputs: dict[str, np.ndarray], blocks: dict[str, slice], tolerance: float
) -> dict[str, LogitCheck]:
    """Each ONNX output (`outputs`) against its block of the PyTorch logits (`blocks`); an output of `blocks`
    that the graph lacks fails with a max difference of infinity and every row differing."""
    checks = {}
    for name, cut in blocks.items():
        if name in outputs:
            checks[name] = compare_logits(reference[:, cut], outputs[name], tolerance)
        else:
            checks[name] = LogitCheck(float("inf"), len(reference), len(reference), passed=False)
    return checks


def overall(checks: dict[str, LogitCheck]) -> LogitCheck:
    """One figure for all outputs: the largest difference (NaN when any is), the differing predictions summed
    over outputs (a row differing on two tasks counts twice), passed when every output passed."""
    if len(checks) == 1:
        return next(iter(checks.values()))
    diffs = np.array([c.max_abs_logit_diff for c in checks.values()], dtype=np.float64)
    return LogitCheck(
        max_abs_logit_diff=float(diffs.max()),
        mismatched_predictions=sum(c.mismatched_predictions for c in checks.values()),
        n=next(iter(checks.values())).n,
        passed=all(c.passed for c in checks.values()),
    )


def failure_message(model_dir: Path, checks: dict[str, LogitCheck], tolerance: float, per_task: bool) -> str:
    """Why the export check failed; with one output per task (`per_task`), each failing output by name."""

    def figures(check: LogitCheck) -> str:
        return (
            f"max |delta logit| = {check.max_abs_logit_diff:.3g} (tolerance {tolerance:.3g}), "
            f"{check.mismatched_predictions} differing predictions"
        )

    check = overall(checks)
    head = f"ONNX export of {model_dir} differs from PyTorch on {check.n} test sentences"
    if not per_task:
        return f"{head}: {figures(check)}"
    failed = [f"output {name}: {figures(c)}" for name, c in checks.items() if not c.passed]
    return f"{head} in {'; '.join(failed)}"


def split_logits_output(path: Path, widths: dict[str, int]) -> list[str]:
    """Rewrite the ONNX file at `path` so that its `logits` output becomes one output per entry of `widths`
    ({name: logits}, in order along the last axis), through one `Split` node; each new output keeps the
    batch axis of `logits` (dynamic in an Optimum export). Weights stored as external data stay where they
    are. Returns the new output names."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    position = next((i for i, o in enumerate(graph.output) if o.name == "logits"), None)
    if position is None:
        raise ValueError(f"{path} has no `logits` output to split (outputs: {[o.name for o in graph.output]})")
    logits = graph.output[position]
    names, sizes = list(widths), [int(w) for w in widths.values()]
    if opset_of(model) >= 13:  # from opset 13 the split sizes are an input, before it an attribute
        sizes_name = "task_logits_split_sizes"
        graph.initializer.append(numpy_helper.from_array(np.array(sizes, dtype=np.int64), sizes_name))
        split = helper.make_node("Split", ["logits", sizes_name], names, name="TaskLogitsSplit", axis=-1)
    else:
        split = helper.make_node("Split", ["logits"], names, name="TaskLogitsSplit", axis=-1, split=sizes)
    graph.node.append(split)
    batch = logits.type.tensor_type.shape.dim[0] if logits.type.tensor_type.shape.dim else None
    batch_dim = (batch.dim_param or (batch.dim_value or None)) if batch is not None else None
    elem_type = logits.type.tensor_type.elem_type
    per_task = [helper.make_tensor_value_info(n, elem_type, [batch_dim, w]) for n, w in zip(names, sizes)]
    outputs = [copy.deepcopy(o) for o in graph.output]  # copies: clearing the field below frees its messages
    outputs[position : position + 1] = per_task
    del graph.output[:]
    graph.output.extend(outputs)
    onnx.save(model, str(path))
    return names


def opset_of(model) -> int:
    """The default-domain (ai.onnx) opset of a loaded ONNX model."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), -1)


def onnx_opset(path: Path) -> int:
    """The default-domain (ai.onnx) opset of an ONNX file."""
    import onnx

    return opset_of(onnx.load(str(path), load_external_data=False))


def run(
    cfg: ExportConfig, model_dir: Path, prepared: Path, out_dir: Path, tracker: Tracker, max_length: int = 64
) -> StageResult:
    from optimum.exporters.onnx import main_export
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir, prepared, out_dir = Path(model_dir), Path(prepared), Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tmp = temp_sibling(out_dir)
    try:
        # Optimum's own validation feeds a few random inputs; ours below runs the real test split,
        # so its pass is skipped rather than run twice.
        require_safetensors(model_dir)  # main_export would load a pickle checkpoint as readily
        main_export(str(model_dir), tmp, task="text-classification", do_validation=False)
        copy_model_metadata(model_dir, tmp, tokenizer)
        labelling = model_labelling(model_dir, prepared)
        blocks = output_blocks(labelling)
        per_task = list(blocks) != ["logits"]
        if per_task:
            split_logits_output(tmp / ONNX_FILE, {name: cut.stop - cut.start for name, cut in blocks.items()})

        test = encode_split(prepared, "test", tokenizer, labelling, max_length)
        # Re-applies pruned_heads.
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True)
        reference = predict_logits(model, test, pad_id_of(tokenizer))
        candidate = onnx_outputs(load_onnx_session(tmp / ONNX_FILE), test, pad_id_of(tokenizer))
        checks = check_outputs(reference, candidate, blocks, cfg.max_abs_logit_diff)
        check = overall(checks)
        opset = onnx_opset(tmp / ONNX_FILE)

        report = asdict(check) | {"opset": opset, "tolerance": cfg.max_abs_logit_diff}
        metrics = {
            "max_abs_logit_diff": check.max_abs_logit_diff,
            "mismatched_predictions": float(check.mismatched_predictions),
            "n_checked": float(check.n),
            "onnx_bytes": float(dir_size_bytes(tmp)),
        }
        if per_task:
            report["outputs"] = {name: asdict(c) for name, c in checks.items()}
            for name, c in checks.items():
                task = name.removeprefix(TASK_LOGITS_PREFIX)
                metrics[f"max_abs_logit_diff.{task}"] = c.max_abs_logit_diff
                metrics[f"mismatched_predictions.{task}"] = float(c.mismatched_predictions)
        (tmp / "export_check.json").write_text(json.dumps(report, indent=2))
        tracker.log_params(cfg.model_dump() | {"opset": opset, "max_length": max_length})
        tracker.log_metrics(metrics)
        if not check.passed:
            raise ExportCheckFailed(failure_message(model_dir, checks, cfg.max_abs_logit_diff, per_task))
        move_into_place(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    tracker.log_artifact(out_dir / "export_check.json")
    return StageResult(metrics=metrics, outputs={"model": out_dir}, info={"opset": opset})
