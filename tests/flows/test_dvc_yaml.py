"""dvc.yaml is generated from the stage tables (flows/dvc_yaml.py): the committed file is the generated one,
its params are each stage's config slice (and the profile keys), and that slice is exactly what the stage
reads; for every task."""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from components.config import load_params
from components.kit.tracking import NullTracker, StageResult
from flows import dvc_yaml
from flows.stages import stage_config
from flows.tasks import TASKS

REPO = Path(__file__).resolve().parents[2]
NAMES = list(TASKS)


def owner(dvc_name: str) -> str:
    """The task a dvc.yaml stage belongs to: the one with the longest prefix that matches (classification's is "")."""
    return max((t for t in NAMES if dvc_name.startswith(TASKS[t].dvc_prefix)), key=lambda t: len(TASKS[t].dvc_prefix))


def committed_stages(task: str) -> dict:
    everything = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: stage for name, stage in everything.items() if owner(name) == task}


def test_every_task_has_its_stages_in_dvc_yaml():
    assert len(NAMES) == 3
    everything = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(everything) == [task.dvc_prefix + name for task in TASKS.values() for name in task.stages]


@pytest.mark.parametrize("task", NAMES)
def test_committed_dvc_yaml_is_generated_from_the_stage_table(task):
    assert committed_stages(task) == dvc_yaml.task_stages(TASKS[task]), "run `miniaturize dvc-yaml` (make dvc-yaml)"


def test_committed_dvc_yaml_is_the_generated_text():
    assert dvc_yaml.drift(REPO / "dvc.yaml") == "", "run `miniaturize dvc-yaml` (make dvc-yaml)"


def test_drift_shows_the_changed_line(tmp_path):
    path = tmp_path / "dvc.yaml"
    path.write_text(dvc_yaml.render().replace("- trim\n", "- trim.enabled\n", 1))
    diff = dvc_yaml.drift(path)
    assert "-    - trim.enabled\n" in diff and "+    - trim\n" in diff
    dvc_yaml.write(path)
    assert dvc_yaml.drift(path) == ""


def declared_params(task: str, stage: dict) -> list[str]:
    entries, params_file = stage.get("params", []), TASKS[task].params_file
    if params_file == dvc_yaml.DEFAULT_PARAMS:
        return entries
    return [key for entry in entries for key in entry[params_file]]


def lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


@pytest.mark.parametrize("task", NAMES)
def test_dvc_params_are_the_stage_config_slice_and_in_the_params_file(task):
    params = load_params(REPO / TASKS[task].params_file)
    raw = yaml.safe_load((REPO / TASKS[task].params_file).read_text())
    prefix = TASKS[task].dvc_prefix
    committed = committed_stages(task)
    for name, stage in TASKS[task].stages.items():
        declared = declared_params(task, committed[prefix + name])
        # the profile the file names, and the profiles' values, change the slice: every stage with one reads them
        expected = [*stage_config(params, stage.sections), *dvc_yaml.PROFILE_PARAMS] if stage.sections else []
        assert declared == expected, name
        for key in declared:  # DVC reads the file itself, not the schema's defaults
            lookup(raw, key)


# ------------------------------------------------------------------ what each stage really reads


class Reads:
    """A config (section) that notes which keys a stage reads: a value's dotted key, or the whole section's
    when the section is handed on (to a component), copied or read through a method."""

    def __init__(self, section: BaseModel, key: str, log: set[str]):
        self._section, self._key, self._log = section, key, log

    def _child(self, name: str) -> str:
        field = type(self._section).model_fields.get(name)
        alias = field.alias if field is not None and field.alias else name
        return f"{self._key}.{alias}" if self._key else alias

    def __getattr__(self, name: str):
        if name == "section":  # Params.section("validate"): the stage's own section by its config name
            return lambda section: Reads(self._section.section(section), section, self._log)
        value = getattr(self._section, name)
        if isinstance(value, BaseModel):
            return Reads(value, self._child(name), self._log)
        self._log.add(self._key if callable(value) else self._child(name))
        return value


class Component:
    """Any function of a component module: notes the sections handed to it, returns a made-up result."""

    def __init__(self, log: set[str]):
        self._log = log

    def __getattr__(self, name: str):
        def call(*args, **kwargs):
            self._log.update(arg._key for arg in (*args, *kwargs.values()) if isinstance(arg, Reads))
            if name == "measure_final":
                return {"accuracy": 1.0, "agreement_with_teacher": 1.0}
            if name == "project_data":
                return {"rows": {"train": 0}}
            if name == "seed_accuracies":
                return {"final": {}, "single_tasks": {}}
            return StageResult(info={"chosen": "int8"})

        return call


# The modules the stage functions call, as names under components/.
COMPONENTS = (
    "validate",
    "classification.ingest",
    "classification.finetune",
    "classification.distill",
    "classification.prune",
    "classification.trim",
    "classification.export",
    "classification.quantize",
    "classification.evaluate",
    "kit.seeds",
    "causal_lm.data",
    "causal_lm.train",
    "causal_lm.export",
    "causal_lm.evaluate",
    "multitask.ingest",
    "multitask.singles",
    "multitask.evaluate",
)
# register hands all the params to flows.registry (a version's params_hash tag covers them all), so these
# fakes cannot tell what it reads: it is left out.
CASES = [(task, name) for task in NAMES for name, stage in TASKS[task].stages.items() if not stage.registers]


def collapse(keys: set[str]) -> set[str]:
    """The keys not inside another one: {lm.prune, lm.prune.ffn_ratio} -> {lm.prune}."""
    return {k for k in keys if not any(k.startswith(other + ".") for other in keys)}


@pytest.mark.parametrize(("task", "name"), CASES)
def test_each_stage_reads_exactly_its_config_slice(task, name, tmp_path, monkeypatch):
    log: set[str] = set()
    fake = Component(log)
    for module in COMPONENTS:
        package, _, attribute = f"components.{module}".rpartition(".")
        monkeypatch.setattr(importlib.import_module(package), attribute, fake, raising=False)
        monkeypatch.setitem(sys.modules, f"components.{module}", fake)
    rmtree = shutil.rmtree  # the fake components write nothing for the seeds stage to remove
    monkeypatch.setattr(shutil, "rmtree", lambda path, ignore_errors=False: rmtree(path, ignore_errors=True))
    # with extra seeds, so that a seeds stage reads what it reads for each one
    params = load_params(REPO / TASKS[task].params_file, overrides=["seeds.extra=[14]"])
    stage = TASKS[task].stages[name]
    stage.run(Reads(params, "", log), TASKS[task].workspace(tmp_path), NullTracker())
    assert collapse(log) == set(stage.sections), name


def test_cli_writes_then_checks(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(app, ["dvc-yaml", "--check"]).exit_code == 1  # no dvc.yaml yet
    assert CliRunner().invoke(app, ["dvc-yaml"]).exit_code == 0
    assert CliRunner().invoke(app, ["dvc-yaml", "--check"]).exit_code == 0
    (tmp_path / "dvc.yaml").write_text((tmp_path / "dvc.yaml").read_text().replace("- seed\n", "", 1))
    done = CliRunner().invoke(app, ["dvc-yaml", "--check"])
    assert done.exit_code == 1 and "+    - seed\n" in done.output
