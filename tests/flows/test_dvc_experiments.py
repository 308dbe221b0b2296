"""DVC's own commands on the pipeline (docs/dvc.md): two `dvc exp run -S ...` experiments of the first
classification stages on a tiny random teacher, at the smoke profile named by `-S profile=smoke`, then what
`dvc exp show`, `dvc metrics diff` and `dvc plots show` say of them."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import make_frame
from tests.flows.conftest import BIN, make_project

pytestmark = pytest.mark.e2e  # two experiments of three stages each: about a minute, more on busy cores

FINETUNE_METRICS = "reports/metrics/finetune.json"


def dvc(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run([str(BIN / "dvc"), *args], cwd=project, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"dvc {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def experiments(tmp_path_factory, tiny_model_dir):
    """A project whose params.yaml trains the tiny teacher on 60 sentences for 2 epochs (the smoke profile
    makes it 1), committed; then one experiment per teacher learning rate, up to the finetune stage."""
    project = make_project(
        tmp_path_factory.mktemp("dvc-exp") / "project",
        {
            "data.source": "data/sentences.csv",
            "teacher.model": str(tiny_model_dir),
            "teacher.epochs": 2,
            "teacher.batch_size": 8,
            "distill.layers": [1],
        },
        profile=None,
    )
    (project / "data").mkdir(exist_ok=True)
    make_frame(30).to_csv(project / "data" / "sentences.csv", index=False)
    for command in (["config", "user.email", "test@example.com"], ["config", "user.name", "test"]):
        subprocess.run(["git", *command], cwd=project, check=True)
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "baseline"], cwd=project, check=True)
    for name, lr in (("lr-small", "0.001"), ("lr-large", "0.01")):
        dvc(project, "exp", "run", "finetune", "-S", "profile=smoke", "-S", f"teacher.lr={lr}", "-n", name)
    return project


def test_exp_show_lists_each_experiments_params_and_stage_metrics(experiments):
    shown = json.loads(dvc(experiments, "exp", "show", "--json").stdout)
    runs = {exp["name"]: exp["revs"][0]["data"] for row in shown for exp in row.get("experiments") or []}
    assert set(runs) == {"lr-small", "lr-large"}
    for name, lr in (("lr-small", 0.001), ("lr-large", 0.01)):
        params = runs[name]["params"]["params.yaml"]["data"]
        assert params["profile"] == "smoke" and params["teacher"]["lr"] == lr
        finetune = runs[name]["metrics"][FINETUNE_METRICS]["data"]
        assert finetune["epochs_run"] == 1  # the smoke profile's, over the file's 2: the profile key applied
        assert 0.0 <= finetune["test_accuracy"] <= 1.0
        ingest = runs[name]["metrics"]["reports/metrics/ingest.json"]["data"]
        assert ingest, "the ingest stage's figures"


def test_metrics_diff_between_the_experiments_names_the_stage_files(experiments):
    diff = json.loads(dvc(experiments, "metrics", "diff", "lr-small", "lr-large", "--json").stdout)
    assert "train_seconds" in diff[FINETUNE_METRICS]
    table = dvc(experiments, "metrics", "diff", "lr-small", "lr-large").stdout
    assert "Path" in table and FINETUNE_METRICS in table and "lr-large" in table


def test_plots_show_draws_the_training_curves(experiments, tmp_path):
    dvc(experiments, "plots", "show", "-o", str(tmp_path))
    page = (tmp_path / "index.html").read_text()
    assert "reports/curves/finetune/finetune.json" in page and "train_loss" in page and "val_accuracy" in page
    rows = json.loads((experiments / "reports/curves/finetune/finetune.json").read_text())
    assert [row["epoch"] for row in rows] == [1]


def test_the_lock_holds_the_stages_run_with_their_metrics_files(experiments):
    lock = yaml.safe_load((experiments / "dvc.lock").read_text())["stages"]
    assert list(lock) == ["ingest", "validate", "finetune"]
    assert FINETUNE_METRICS in [out["path"] for out in lock["finetune"]["outs"]]
