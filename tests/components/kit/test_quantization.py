import pytest

from components.kit.quantization import choose_preset, read_cpu_flags


@pytest.mark.parametrize(
    "flags, machine, expected",
    [
        ({"sse4_2", "avx", "avx2", "avx512f", "avx512bw", "avx512_vnni"}, "x86_64", "avx512_vnni"),
        ({"avx2", "avx512f", "avx512bw", "avx512vl"}, "x86_64", "avx512"),
        ({"avx2", "avx512f"}, "x86_64", "avx2"),  # AVX-512 foundation without BW (Knights Landing)
        ({"avx2", "avx_vnni"}, "x86_64", "avx2"),  # AVX-VNNI is not AVX-512 VNNI
        ({"avx2"}, "AMD64", "avx2"),
        ({"sse4_2"}, "x86_64", "avx2"),  # fallback
        (set(), "x86_64", "avx2"),
        ({"fp", "asimd", "asimddp"}, "aarch64", "arm64"),
        (set(), "arm64", "arm64"),  # macOS on Apple silicon
        ({"avx512_vnni"}, "armv7l", "arm64"),  # the machine wins over stray flags
    ],
)
def test_choose_preset(flags, machine, expected):
    assert choose_preset(flags, machine) == expected


def test_read_cpu_flags(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu avx2 AVX512_VNNI\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert read_cpu_flags(x86) == {"fpu", "avx2", "avx512_vnni"}
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd\n")
    assert read_cpu_flags(arm) == {"fp", "asimd"}
    assert read_cpu_flags(tmp_path / "missing") == set()
