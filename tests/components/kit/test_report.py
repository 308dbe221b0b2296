import json
import math

import pytest

from components.kit.report import ModelSpec, write_report


def test_checked_specs_need_distinct_required_names_and_known_runtimes(tmp_path):
    specs = [ModelSpec("teacher", str(tmp_path), "pytorch"), ModelSpec("final", str(tmp_path), "onnxruntime")]
    checked = ModelSpec.checked(specs, ("teacher", "final"))
    assert [m.name for m in checked] == ["teacher", "final"] and checked[0].path == tmp_path
    with pytest.raises(ValueError, match="'teacher' and 'final'"):
        ModelSpec.checked(specs[:1], ("teacher", "final"))
    with pytest.raises(ValueError, match="distinct"):
        ModelSpec.checked(specs + specs[1:], ("teacher", "final"))
    with pytest.raises(ValueError, match="unknown runtime"):
        ModelSpec.checked([*specs, ModelSpec("x", tmp_path, "tensorflow")], ("teacher",))


def test_write_report_writes_strict_json_and_markdown(tmp_path):
    report = {"value": math.nan, "rows": [1, math.inf]}
    json_path, md_path = write_report(tmp_path / "out", report, lambda r: f"# {len(r)} keys\n")
    assert json.loads(json_path.read_text()) == {"value": None, "rows": [1, None]}
    assert md_path.read_text() == "# 2 keys\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["compression_report.json", "compression_report.md"]


def test_environment_names_the_machine_threads_and_versions():
    from components.kit.report import environment_info

    env = environment_info(3)
    assert set(env) == {"cpu", "logical_cpus", "threads", "torch", "onnxruntime", "transformers", "python"}
    assert env["threads"] == 3 and isinstance(env["logical_cpus"], int) and env["logical_cpus"] >= 1
    assert all(isinstance(env[k], str) and env[k] for k in ("cpu", "torch", "onnxruntime", "transformers", "python"))


def test_cpu_name_reads_cpuinfo_else_falls_back_to_the_platform(monkeypatch, tmp_path):
    from components.kit import report

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Fake CPU @ 3.0GHz\nflags\t\t: avx2\n")
    assert report.cpu_name(cpuinfo) == "Fake CPU @ 3.0GHz"
    monkeypatch.setattr(report.platform, "processor", lambda: "arm")
    # no /proc/cpuinfo (macOS, Windows), or one without a model name (some ARM boards): the platform's word
    assert report.cpu_name(tmp_path / "absent") == "arm"
    cpuinfo.write_text("processor\t: 0\nBogoMIPS\t: 48.00\n")
    assert report.cpu_name(cpuinfo) == "arm"


def test_environment_line_names_cpu_count_threads_and_versions():
    from components.kit.report import environment_line

    env = {
        "cpu": "Fake CPU",
        "logical_cpus": 8,
        "threads": 2,
        "onnxruntime": "1.2",
        "torch": "2.3",
        "transformers": "4.5",
    }
    assert environment_line(env) == (
        "on Fake CPU (8 logical CPUs), 2 intra-op thread(s) for every model; onnxruntime 1.2, torch 2.3, "
        "transformers 4.5."
    )
    # an older report's environment, with the CPU and threads only
    assert environment_line({"cpu": "x", "threads": 1}) == "on x, 1 intra-op thread(s) for every model."
