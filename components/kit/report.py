"""What both tasks' evaluate stages share in their compression reports: the models they measure
(`ModelSpec`: `ModelSpec.checked` checks a list, `weights_facts` describes one), strict JSON (`json_safe`), the
machine the figures come from (`environment_info`, and `environment_line` for the markdown), the markdown of figures, comparisons and the gate (`fmt`,
`versus_lines`, `gate_lines`), the stage's closing line (`gate_summary`), and the two report files
(`write_report`: compression_report.json and compression_report.md, each written atomically)."""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from components.kit.files import write_atomic
from components.kit.gate import GateDecision
from components.kit.latency import onnx_params, onnx_precision, onnx_size_bytes, runtime_kind

REPORT_JSON, REPORT_MD = "compression_report.json", "compression_report.md"


@dataclass
class ModelSpec:
    """A model an evaluate stage measures: its report name, its folder (or file), the runtime it runs in, and
    whether its peak memory is measured (`memory`): a fresh process per model costs seconds, so it is spent
    on the models that are served or compared (teacher, exports, final, baselines), not on the
    intermediate PyTorch models of the chain, whose entry then holds None."""

    name: str
    path: Path
    runtime: Literal["pytorch", "onnxruntime"]
    memory: bool = True

    @classmethod
    def checked(cls, models: list[ModelSpec], required: tuple[str, ...]) -> list[ModelSpec]:
        """The specs with `Path` paths, in order; ValueError unless their names are distinct and include
        every `required` name, or for an unknown runtime: checked before minutes of measuring."""
        models = [cls(m.name, Path(m.path), m.runtime, m.memory) for m in models]
        names = [m.name for m in models]
        if any(n not in names for n in required) or len(set(names)) != len(names):
            raise ValueError(
                f"evaluate needs distinct model names including {' and '.join(map(repr, required))}; got {names}"
            )
        for m in models:
            runtime_kind(m.runtime)
        return models

    def weights_facts(self, model=None) -> tuple[str, int, int]:
        """(runtime label, weight bytes, parameters). The label names the runtime and the weights' precision
        ('pytorch fp32', 'onnxruntime int8', ...). A PyTorch model: its folder's weight files and the loaded
        `model`'s parameters; an ONNX model: read from its file (`latency.onnx_size_bytes`, `onnx_params`)."""
        if runtime_kind(self.runtime) == "onnx":
            return f"onnxruntime {onnx_precision(self.path)}", onnx_size_bytes(self.path), onnx_params(self.path)
        from components.kit.modeling import count_params, dir_size_bytes  # imports torch: a PyTorch model only

        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        label = "pytorch " + {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(dtype, dtype)
        return label, dir_size_bytes(self.path), count_params(model)


def json_safe(value):
    """The value with NaN and inf floats replaced by None, so the JSON is strict (no NaN/Infinity)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def environment_info(threads: int) -> dict:
    """The machine and software the figures come from: the CPU model (`cpu_name`), its logical CPU count, the
    intra-op thread count every model ran with (`threads`), and the onnxruntime, torch, transformers and
    Python versions."""
    import onnxruntime
    import torch
    import transformers

    return {
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count() or 0,  # 0: the count is unknown on this platform
        "threads": threads,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def environment_line(env: dict) -> str:
    """The environment as a sentence for a markdown report: "on <cpu> (<n> logical CPUs), <t> intra-op
    thread(s) for every model; onnxruntime <v>, torch <v>, transformers <v>." A figure the dict lacks (an
    older report) is left out."""
    cpus = f" ({env['logical_cpus']} logical CPUs)" if env.get("logical_cpus") else ""
    versions = ", ".join(f"{name} {env[name]}" for name in ("onnxruntime", "torch", "transformers") if env.get(name))
    return (
        f"on {env.get('cpu', 'an unnamed CPU')}{cpus}, {env.get('threads', '?')} intra-op thread(s) for every model"
        + (f"; {versions}." if versions else ".")
    )


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU model from /proc/cpuinfo ("model name"), else `platform.processor()`, else the architecture."""
    try:
        for line in cpuinfo.read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def fmt(value, spec: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def with_spread(figures: dict, key: str, spec: str = ".2f") -> str:
    """A median figure with its spread over timing rounds in brackets, "1.23 (0.05)" (`figures[key + "_spread"]`);
    the median alone when the entry has no spread (a report built without timing rounds)."""
    spread = figures.get(f"{key}_spread")
    return fmt(figures[key], spec) + ("" if spread is None else f" ({fmt(spread, spec)})")


def check_result(check: dict) -> str:
    """pass, FAIL, or skipped (passed without a value: a comparison that was not made, the note says why)."""
    if not check["passed"]:
        return "FAIL"
    return "skipped" if check["value"] is None or not math.isfinite(check["value"]) else "pass"


def versus_lines(title: str, figures: dict[str, str]) -> list[str]:
    """A comparison (final vs teacher, ...) as a markdown section: `## title` over a one-row table, a
    right-aligned column per figure, `figures` mapping each column's heading to its formatted value."""
    return [
        "",
        f"## {title}",
        "",
        "| " + " | ".join(figures) + " |",
        "|" + "---:|" * len(figures),
        "| " + " | ".join(figures.values()) + " |",
    ]


def gate_lines(gate: dict) -> list[str]:
    """The gate decision as a markdown section (both tasks' reports)."""
    lines = [
        "",
        f"## Gate: {'PASSED' if gate['passed'] else 'FAILED'}",
        "",
        "| check | value | threshold | result | note |",
        "|---|---:|---:|---|---|",
    ]
    for name, c in gate["checks"].items():
        lines.append(
            f"| {name} | {fmt(c['value'], '.3f')} | {fmt(c['threshold'], '.3f')} "
            f"| {check_result(c)} | {c.get('note', '')} |"
        )
    return lines


def gate_summary(decision: GateDecision, versus_teacher: str) -> str:
    """The evaluate stage's closing line: the gate's verdict (naming the failed checks), then how final
    compares with teacher (`versus_teacher`, the task's own figures)."""
    verdict = "passed" if decision.passed else f"FAILED ({', '.join(decision.failed())})"
    return f"  evaluate: gate {verdict}; final vs teacher: {versus_teacher}"


def write_report(out_dir: Path, report: dict, render_markdown: Callable[[dict], str]) -> tuple[Path, Path]:
    """out_dir/compression_report.json (strict JSON: no NaN) and out_dir/compression_report.md, each atomically."""
    json_path = write_atomic(
        out_dir / REPORT_JSON, lambda p: p.write_text(json.dumps(json_safe(report), indent=2, allow_nan=False))
    )
    md_path = write_atomic(out_dir / REPORT_MD, lambda p: p.write_text(render_markdown(report)))
    return json_path, md_path
