"""Recording a run in DVC (flows/versioning.py): the message names the `dvc status` it checked, the task's own
stages, and that command agrees with it while a plain `dvc status` still lists another task's stages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from flows import versioning
from flows.tasks import TASKS

DVC = str(Path(sys.executable).with_name("dvc"))

# Two tasks in one dvc.yaml: "a" ran (its stages' outputs exist), "b" never did.
PIPELINE = {
    "stages": {
        "a-make": {"cmd": "echo", "deps": ["input.txt"], "outs": ["made.txt"]},
        "a-use": {"cmd": "echo", "deps": ["made.txt"], "metrics": ["metrics.json"]},
        "b-make": {"cmd": "echo", "deps": ["input.txt"], "outs": ["other.txt"]},
    }
}


def dvc_project(root: Path) -> Path:
    subprocess.run([DVC, "init", "--no-scm", "--quiet"], cwd=root, check=True)
    (root / "dvc.yaml").write_text(yaml.safe_dump(PIPELINE, sort_keys=False))
    for name, text in (("input.txt", "in\n"), ("made.txt", "made\n"), ("metrics.json", '{"accuracy": 0.9}\n')):
        (root / name).write_text(text)
    return root


def status(root: Path, *args: str) -> str:
    return subprocess.run([DVC, "status", *args], cwd=root, capture_output=True, text=True, check=True).stdout


def test_the_message_names_the_status_command_it_checked_and_dvc_agrees(tmp_path):
    root = dvc_project(tmp_path)
    ok, message = versioning.commit_outputs(root, ["a-make", "a-use"])
    assert ok, message
    assert message == "DVC: outputs recorded in dvc.lock; `dvc status a-make a-use` is clean (`dvc push` stores them)"
    command = message.split("`")[1].split()
    assert "up to date" in status(root, *command[2:])
    assert "b-make" in status(root)  # the stage that never ran: why the message names the stages


def test_a_change_after_the_commit_is_reported_not_called_clean(tmp_path, monkeypatch):
    root = dvc_project(tmp_path)
    original = versioning.dvc

    calls = []

    def dvc(where, *args):
        calls.append(args[0])
        if calls[-2:] == ["commit", "status"]:  # an output edited between the commit and the check
            (root / "made.txt").write_text("changed\n")
        return original(where, *args)

    monkeypatch.setattr(versioning, "dvc", dvc)
    ok, message = versioning.commit_outputs(root, ["a-make", "a-use"])
    assert not ok and message.endswith("`dvc status a-make a-use` lists changes in a-make, a-use")


def test_outputs_dvc_lock_already_records_cost_one_status_and_no_commit(tmp_path, monkeypatch):
    root = dvc_project(tmp_path)
    assert versioning.commit_outputs(root, ["a-make", "a-use"])[0]
    original, calls = versioning.dvc, []

    def dvc(where, *args):
        calls.append(args[0])
        return original(where, *args)

    monkeypatch.setattr(versioning, "dvc", dvc)
    ok, message = versioning.commit_outputs(root, ["a-make", "a-use"])  # an unchanged re-run
    assert ok and calls == ["status"]
    assert message.startswith("DVC: dvc.lock already records these outputs; `dvc status a-make a-use` is clean")
    (root / "made.txt").write_text("new\n")  # a stage that re-ran: committed, then checked
    calls.clear()
    ok, message = versioning.commit_outputs(root, ["a-make", "a-use"])
    assert ok and calls == ["status", "commit", "status"] and "outputs recorded in dvc.lock" in message
    (root / "made.txt").write_text("newer\n")  # the caller knows a stage ran: no first check
    calls.clear()
    ok, message = versioning.commit_outputs(root, ["a-make", "a-use"], ran=True)
    assert ok and calls == ["commit", "status"] and "outputs recorded in dvc.lock" in message


def test_one_with_deps_target_commits_the_stages_when_nothing_else_is_upstream(tmp_path):
    root = dvc_project(tmp_path)
    assert versioning.upstream_stages(root) == {"a-make": set(), "a-use": {"a-make"}, "b-make": set()}
    assert versioning.commit_targets(root, ["a-make", "a-use"]) == ["--with-deps", "a-use"]
    # a-use alone: --with-deps would commit a-make too, so the stage is named on its own
    assert versioning.commit_targets(root, ["a-use"]) == ["a-use"]
    assert versioning.commit_targets(root, ["a-make", "b-make"]) == ["--with-deps", "a-make", "b-make"]


def test_what_dvc_status_json_says_changed():
    def done(code: int, out: str) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess([], code, out, "")

    assert versioning.changed_stages(done(0, "{}\n")) == []
    assert versioning.changed_stages(done(0, '{"train": [{"changed deps": {"a": "modified"}}]}')) == ["train"]
    # the whole project's status, the task's own stages picked out of it
    both = '{"train": [{"changed outs": {"m": "deleted"}}], "lm-train": [], "data/replay.dvc": []}'
    assert versioning.changed_stages(done(0, both), ["train", "evaluate"]) == ["train"]
    assert versioning.changed_stages(done(1, "")) is None
    assert versioning.changed_stages(done(0, "not json")) is None


def test_the_stages_recorded_are_the_tasks_own_under_its_prefix():
    root = Path(__file__).resolve().parents[2]
    lm = TASKS["causal-lm"]
    assert versioning.dvc_stages(root, root / lm.params_file, lm) == [f"lm-{name}" for name in lm.stages]
    assert versioning.dvc_stages(root, root / "params.yaml", lm) is None  # another file: not what dvc.lock holds
