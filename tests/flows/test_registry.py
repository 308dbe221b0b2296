from pathlib import Path

from components.config import build_params
from flows.registry import CHALLENGER, CHAMPION, alias_for, version_tags
from flows.workspace import Workspace

REPORT = {"task": "sequence-classification", "dataset": {"sha256": "ab" * 32},
          "final_vs_teacher": {"size_ratio": 5.0, "speedup_batch1_p50": 9.0, "accuracy_drop_points": 0.5},
          "gate": {"passed": False, "checks": {"size_ratio": {"passed": True}, "speedup_batch1_p50": {"passed": False}}}}


def test_gate_result_picks_the_alias():
    assert alias_for(True) == CHAMPION and alias_for(False) == CHALLENGER


def test_version_tags_trace_the_version():
    tags = version_tags(build_params({}), Workspace(Path(".")), REPORT, "parent123")
    assert tags["data_sha256"] == "ab" * 32 and tags["parent_run_id"] == "parent123"
    assert tags["gate_passed"] == "false" and tags["gate_failed_checks"] == "speedup_batch1_p50"
    assert len(tags["params_hash"]) == 16 and tags["git_commit"]
    assert tags["final_vs_teacher.size_ratio"] == "5"
