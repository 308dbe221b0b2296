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
