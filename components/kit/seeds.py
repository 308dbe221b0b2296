"""Seed spread: how much the accuracy of the compressed model moves when only the training seed changes.

The teacher and the data split stay fixed; the student chain (distill, prune, trim, export, quantize) is
re-trained with each seed of `seeds.extra` by the seeds stage (`flows.stages.seeds`), which measures each
seed's final model with `measure_final`. The evaluate stage adds the pipeline's own seed and reports the
accuracy drop against the teacher (and against the quantize-only baseline) as mean, standard deviation and
range with `summarise`. Two stages use this module, so it is in the kit. On a test split of about 1,000
sentences one point is ten sentences, so a single seed's drop is noise-bound; the mean over seeds is the
figure to compare.
"""

from __future__ import annotations

import statistics
from pathlib import Path


def measure_final(final_dir: Path, teacher_dir: Path, prepared: Path, max_length: int) -> dict:
    """Test accuracy of an ONNX final model and its agreement with the teacher's predictions."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from components.kit.labelling import model_labelling
    from components.kit.modeling import encode_split, predict_logits
    from components.kit.onnx_models import onnx_logits, pad_id_of

    tokenizer = AutoTokenizer.from_pretrained(final_dir)
    labels = model_labelling(final_dir, prepared)
    test = encode_split(prepared, "test", tokenizer, labels, max_length)
    final = onnx_logits(final_dir, test, pad_id_of(tokenizer))
    teacher_tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    teacher_test = encode_split(prepared, "test", teacher_tokenizer, labels, max_length)
    teacher_model = AutoModelForSequenceClassification.from_pretrained(teacher_dir, use_safetensors=True)
    teacher = predict_logits(teacher_model, teacher_test, teacher_tokenizer.pad_token_id)
    return {
        "accuracy": labels.score(final, test.labels),
        "agreement_with_teacher": float((final.argmax(-1) == teacher.argmax(-1)).mean()),
    }


def spread(values: list[float]) -> dict:
    """mean, sample standard deviation (0 for one value), min, max and n."""
    values = [float(v) for v in values]
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def summarise(main_seed: int, final: dict, teacher: dict, baseline: dict | None, extra: list[dict]) -> dict:
    """The report's `seeds` section: one row per seed (the pipeline's own first), and the spreads.

    `final`, `teacher` and `baseline` are evaluate entries (accuracy, agreement_with_teacher); `extra`
    rows come from the seeds stage (seed, accuracy, agreement_with_teacher).
    """
    rows = [
        {"seed": main_seed, "accuracy": final["accuracy"], "agreement_with_teacher": final["agreement_with_teacher"]}
    ]
    rows += [{k: r[k] for k in ("seed", "accuracy", "agreement_with_teacher")} for r in extra]
    for row in rows:
        row["accuracy_drop_points"] = 100.0 * (teacher["accuracy"] - row["accuracy"])
        if baseline is not None:
            row["accuracy_drop_vs_baseline_points"] = 100.0 * (baseline["accuracy"] - row["accuracy"])
    out = {
        "runs": rows,
        "accuracy": spread([r["accuracy"] for r in rows]),
        "accuracy_drop_points": spread([r["accuracy_drop_points"] for r in rows]),
        "agreement_with_teacher": spread([r["agreement_with_teacher"] for r in rows]),
    }
    if baseline is not None:
        out["accuracy_drop_vs_baseline_points"] = spread([r["accuracy_drop_vs_baseline_points"] for r in rows])
    return out
