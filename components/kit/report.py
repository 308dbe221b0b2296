"""What both tasks' evaluate stages share in their compression reports: the models they measure
(`ModelSpec`), strict JSON (`json_safe`), the machine the figures come from (`environment_info`), and the
markdown of figures and of the gate (`fmt`, `gate_lines`)."""

from __future__ import annotations

import math
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass
class ModelSpec:
    name: str
    path: Path
    runtime: Literal["pytorch", "onnxruntime"]


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
    import onnxruntime
    import torch
    import transformers

    return {"cpu": cpu_name(), "threads": threads, "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def fmt(value, spec: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def check_result(check: dict) -> str:
    """pass, FAIL, or skipped (passed without a value: a comparison that was not made, the note says why)."""
    if not check["passed"]:
        return "FAIL"
    return "skipped" if check["value"] is None or not math.isfinite(check["value"]) else "pass"


def gate_lines(gate: dict) -> list[str]:
    """The gate decision as a markdown section (both tasks' reports)."""
    lines = ["", f"## Gate: {'PASSED' if gate['passed'] else 'FAILED'}", "",
             "| check | value | threshold | result | note |", "|---|---:|---:|---|---|"]
    for name, c in gate["checks"].items():
        lines.append(f"| {name} | {fmt(c['value'], '.3f')} | {fmt(c['threshold'], '.3f')} "
                     f"| {check_result(c)} | {c.get('note', '')} |")
    return lines
