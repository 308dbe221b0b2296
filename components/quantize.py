"""Stage, quantize: dynamic int8 quantization of an exported ONNX classifier with ONNX Runtime (via Optimum).

`run(cfg, onnx_dir, prepared, out_dir, tracker)` quantizes `onnx_dir/model.onnx` with
`ORTQuantizer` and an `AutoQuantizationConfig` preset (weights int8 ahead of time, activations quantized
on the fly, so no calibration data is needed). Preset "auto" is decided by `choose_preset` from the CPU
flags of the machine running the stage. The output folder holds the int8 `model.onnx`, `config.json`,
the tokenizer and `labels.json`, like the export folder, so later stages load either one the same way.

It then reports how far int8 strays from fp32: the share of identical predictions (agreement) on the test
and validation splits, both accuracies, and the sizes, in `out_dir/quantize_report.json`. The folder is
built in a temporary sibling and renamed into place at the end.
"""

from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path

import numpy as np

from components.config import QuantizeConfig
from components.export import (ONNX_FILE, copy_model_metadata, encode_split, move_into_place, onnx_logits,
                               onnx_session, pad_id_of, read_model_labels, temp_sibling)
from components.modeling import accuracy, dir_size_bytes
from components.tracking import StageResult, Tracker

ARM_MACHINES = ("aarch64", "arm")  # covers arm64 (macOS) and armv7l/armv8l


def choose_preset(cpu_flags: set[str], machine: str) -> str:
    """The Optimum quantization preset for a CPU: avx512_vnni, avx512, avx2 or arm64.

    `cpu_flags` are the lower-case /proc/cpuinfo flags, `machine` is `platform.machine()`.
    """
    if machine.lower().startswith(ARM_MACHINES):
        return "arm64"
    if "avx512_vnni" in cpu_flags:
        return "avx512_vnni"
    # ONNX Runtime's AVX-512 int8 kernels need the byte/word instructions (BW) on top of the foundation.
    if {"avx512f", "avx512bw"} <= cpu_flags:
        return "avx512"
    # avx2 is also the fallback (AVX-VNNI without AVX-512 has no preset of its own): the preset only
    # shapes the quantized graph, ONNX Runtime picks its int8 kernels for the CPU at run time.
    return "avx2"


def read_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """CPU feature flags ('flags' on x86, 'Features' on ARM); empty where /proc/cpuinfo is missing."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return set(value.lower().split())
    return set()


def resolve_preset(preset: str) -> str:
    return choose_preset(read_cpu_flags(), platform.machine()) if preset == "auto" else preset


def quantization_config(preset: str, per_channel: bool):
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    return getattr(AutoQuantizationConfig, preset)(is_static=False, per_channel=per_channel)


def agreement(a_logits: np.ndarray, b_logits: np.ndarray) -> float:
    """Share of sentences on which two models predict the same class (1.0 for an empty split)."""
    if len(a_logits) != len(b_logits):
        raise ValueError(f"different numbers of rows: {len(a_logits)} and {len(b_logits)}")
    return float((a_logits.argmax(-1) == b_logits.argmax(-1)).mean()) if len(a_logits) else 1.0


def quantize_into(onnx_dir: Path, dst: Path, preset: str, per_channel: bool) -> Path:
    """Write the int8 model as dst/model.onnx; Optimum names it model_quantized.onnx."""
    from optimum.onnxruntime import ORTQuantizer

    quantizer = ORTQuantizer.from_pretrained(onnx_dir, file_name=ONNX_FILE)
    quantizer.quantize(save_dir=dst, quantization_config=quantization_config(preset, per_channel))
    (dst / "model_quantized.onnx").rename(dst / ONNX_FILE)
    return dst / ONNX_FILE


def run(cfg: QuantizeConfig, onnx_dir: Path, prepared: Path, out_dir: Path, tracker: Tracker,
        max_length: int = 64) -> StageResult:
    from transformers import AutoTokenizer

    onnx_dir, prepared, out_dir = Path(onnx_dir), Path(prepared), Path(out_dir)
    preset = resolve_preset(cfg.preset)
    tracker.log_params({"preset": preset, "preset_requested": cfg.preset, "per_channel": cfg.per_channel})
    tokenizer = AutoTokenizer.from_pretrained(onnx_dir)
    pad_id = pad_id_of(tokenizer)
    labels = read_model_labels(onnx_dir)

    tmp = temp_sibling(out_dir)
    try:
        int8_path = quantize_into(onnx_dir, tmp, preset, cfg.per_channel)
        shutil.copy2(onnx_dir / "config.json", tmp / "config.json")
        copy_model_metadata(onnx_dir, tmp, tokenizer)

        fp32, int8 = onnx_session(onnx_dir / ONNX_FILE), onnx_session(int8_path)
        report: dict[str, float | str | bool] = {"preset": preset, "per_channel": cfg.per_channel}
        for split in ("test", "validation"):
            data = encode_split(prepared, split, tokenizer, labels, max_length)
            fp32_logits, int8_logits = onnx_logits(fp32, data, pad_id), onnx_logits(int8, data, pad_id)
            report[f"agreement_{split}"] = agreement(fp32_logits, int8_logits)
            report[f"accuracy_fp32_{split}"] = accuracy(fp32_logits, data.labels)
            report[f"accuracy_int8_{split}"] = accuracy(int8_logits, data.labels)
            report[f"n_{split}"] = len(data)
        fp32_bytes, int8_bytes = dir_size_bytes(onnx_dir), dir_size_bytes(tmp)
        report |= {"size_fp32_bytes": fp32_bytes, "size_int8_bytes": int8_bytes,
                   "size_ratio": fp32_bytes / int8_bytes}  # > 1: int8 is that many times smaller
        (tmp / "quantize_report.json").write_text(json.dumps(report, indent=2))
        move_into_place(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    metrics = {k: float(v) for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    tracker.log_metrics(metrics)
    tracker.log_artifact(out_dir / "quantize_report.json")
    return StageResult(metrics=metrics, outputs={"model": out_dir}, info={"preset": preset})
