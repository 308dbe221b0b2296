"""Dynamic int8 quantization of an ONNX model with Optimum's `ORTQuantizer`, shared by both tasks' quantize
stages: the preset for this machine's CPU (`resolve_preset`) and the quantized copy (`quantize_into`).

A preset ("avx512_vnni", "avx512", "avx2", "arm64") names an `AutoQuantizationConfig`: weights int8 ahead
of time, activations quantized on the fly, so no calibration data is needed. "auto" is decided by
`choose_preset` from the CPU flags of the machine running the stage. Optimum is imported inside functions only.
"""

from __future__ import annotations

import platform
from pathlib import Path

from components.kit.onnx_models import ONNX_FILE

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


def quantize_into(onnx_dir: Path, dst: Path, preset: str, per_channel: bool) -> Path:
    """Write the int8 model as dst/model.onnx; Optimum names it model_quantized.onnx."""
    from optimum.onnxruntime import ORTQuantizer

    quantizer = ORTQuantizer.from_pretrained(onnx_dir, file_name=ONNX_FILE)
    quantizer.quantize(save_dir=dst, quantization_config=quantization_config(preset, per_channel))
    (dst / "model_quantized.onnx").rename(dst / ONNX_FILE)
    return dst / ONNX_FILE
