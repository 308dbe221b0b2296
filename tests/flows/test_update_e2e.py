"""End to end through the CLI: a first run, then `miniaturize update` twice (each warm-started from the
champion, each a new version with its parent), the lineage chain, an unchanged batch that ends at once, a
batch with an unknown label refused, a batch with flipped labels refused by the forgetting gate (the
champion stays), an update of an older version refused for what the champion knows, a killed update that leaves everything as it was, and the DVC records of the batches and
the replay buffer. The tiny project of tests/reliability (2-layer random BERT) keeps it to seconds per step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import NEGATIVE, POSITIVE, tiny_bert
from tests.flows.conftest import BIN, run_cli
from tests.reliability.conftest import make_tiny_project

pytestmark = pytest.mark.e2e

GADGET_POS = ["the battery lasts forever", "a crisp bright screen", "setup took one minute", "worth every penny"]
GADGET_NEG = ["the charger broke in a day", "the screen cracked at once", "support never answered", "it overheats"]
FOOD_POS = ["the soup was delicious", "friendly waiters and fresh bread", "the dessert was heavenly"]
FOOD_NEG = ["the noodles were soggy", "cold coffee and stale cake", "the waiter ignored us"]
# Settings a tiny model without dropout learns these phrases with in a few epochs (measured: 100% validation
# accuracy after 3 epochs at lr 1e-2), so forgetting shows; the gate's thresholds suit such a model.
UPDATE = {
    "teacher.epochs": 4,
    "teacher.lr": 1.0e-2,
    "teacher.patience": 4,
    "distill.lr": 1.0e-3,
    "prune.lr": 1.0e-3,
    "incremental.teacher_epochs": 4,
    "incremental.student_epochs": 4,
    "incremental.patience": 4,
    "incremental.teacher_lr": 3.0e-3,
    "incremental.student_lr": 3.0e-3,
    "incremental.batch_size": 8,
    "incremental.replay_size": 60,
    "incremental.max_forgetting_points": 15.0,
    "incremental.min_new_batch_accuracy": 0.5,
    "register.gate.max_size_growth_vs_champion": 1.5,
}


def batch(positive: list[str], negative: list[str], n: int, offset: int = 0, flip: bool = False) -> pd.DataFrame:
    rows = []
    for i in range(n):
        rows.append((f"{positive[i % len(positive)]} item {offset + i}", "negative" if flip else "positive"))
        rows.append((f"{negative[i % len(negative)]} item {offset + i}", "positive" if flip else "negative"))
    return pd.DataFrame(rows, columns=["text", "label"])


@pytest.fixture(scope="module")
def learner_dir(tmp_path_factory) -> Path:
    """The tiny random BERT of tests/conftest.py without dropout: it learns the fixture phrases in seconds."""
    return tiny_bert(tmp_path_factory.mktemp("learner"), dropout=0.0)


@pytest.fixture(scope="module")
def stream(tmp_path_factory, learner_dir, prefect_api):
    project = make_tiny_project(tmp_path_factory.mktemp("update") / "project", learner_dir, UPDATE)
    data = project / "data"
    batch(GADGET_POS, GADGET_NEG, 40).to_csv(data / "gadgets.csv", index=False)
    batch(FOOD_POS, FOOD_NEG, 40).to_csv(data / "food.csv", index=False)
    # the first batch's phrases again, labels flipped: learning it means forgetting the first batch
    batch(POSITIVE, NEGATIVE, 40, offset=500, flip=True).to_csv(data / "flipped.csv", index=False)
    unknown = batch(FOOD_POS, FOOD_NEG, 20, offset=900)
    unknown.loc[::3, "label"] = "neutral"
    unknown.to_csv(data / "unknown.csv", index=False)
    steps = {"run": run_cli(["run"], project, prefect_api)}
    for name in ("gadgets", "food"):
        steps[name] = run_cli(["update", "--data", f"data/{name}.csv"], project, prefect_api)
    return project, steps


def registry(project: Path):
    from flows import tracking

    return tracking.client(project)


def test_updates_register_versions_warm_started_from_the_champion(stream):
    project, steps = stream
    for name, done in steps.items():
        assert done.returncode == 0, f"{name}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    out = steps["gadgets"].stdout
    assert "starting from miniaturize-reviews version 1" in out
    assert "version 2 (parent 1) is now @champion" in out, out[-2000:]
    assert "forgetting (largest drop on an earlier batch)" in out and "training examples processed" in out
    assert "version 3 (parent 2) is now @champion" in steps["food"].stdout
    report = json.loads((project / "reports" / "update" / "v3.json").read_text())
    assert [r["batch"] for r in report["per_batch"]] == ["reviews", "gadgets", "food"]
    assert [r["new"] for r in report["per_batch"]] == [False, False, True]
    assert all(0.0 <= r["after"] <= 1.0 and 0.0 <= r["before"] <= 1.0 for r in report["per_batch"])
    # both models on the same test sentences: the change in accuracy is the sentences gained less those lost
    for r in report["per_batch"]:
        pair = r["paired"]
        assert 0.0 <= pair["p_value"] <= 1.0 and pair["lost"] + pair["gained"] <= pair["n"]
        assert 100 * (pair["gained"] - pair["lost"]) / pair["n"] == pytest.approx(r["change_points"])
    assert "| right to wrong | wrong to right | McNemar p |" in (project / "reports" / "update" / "v3.md").read_text()
    # new words reached the trimmed student: pieces its vocabulary had dropped were restored from the teacher
    gadgets = json.loads((project / "reports" / "update" / "v2.json").read_text())
    assert gadgets["wordpieces_restored"] > 0 and gadgets["restored_examples"]
    # the cost is counted: new rows plus the replay buffer, over every epoch of teacher and student
    assert report["cost"]["examples"] >= 2 * (64 + 60) and report["cost"]["seconds"] > 0
    # the updated student judged against the updated teacher by the accuracy budget a full run holds it to
    assert isinstance(report["budget"]["spent_points"], float) and isinstance(report["budget"]["within"], bool)
    assert "- student against the updated teacher" in (project / "reports" / "update" / "v3.md").read_text()
    # and, before it learned the batch, the champion student against the updated teacher on what it knew
    assert isinstance(report["growth"]["spent_points"], float) and isinstance(report["growth"]["within"], bool)
    assert (
        "- champion student against the updated teacher on the batches it knew"
        in (project / "reports" / "update" / "v3.md").read_text()
    )
    # the first run's warm start records which teacher layers its student kept, so an update can grow it
    first = registry(project).get_model_version("miniaturize-reviews", "1")
    config = Path(
        registry(project).download_artifacts(first.run_id, "warm_start/student/config.json", str(project / "dl"))
    )
    student = json.loads(config.read_text())
    assert len(student["teacher_layers"]) == student["num_hidden_layers"]
    version = registry(project).get_model_version("miniaturize-reviews", "3")
    assert version.tags["incremental.parent_version"] == "2" and version.tags["source"] == "update"
    assert version.tags["data_source"] == "reviews"  # the data the first run learned, not a batch's
    assert [b["name"] for b in json.loads(version.tags["incremental.batches"])] == ["reviews", "gadgets", "food"]
    assert version.tags["bundle.manifest_sha256"]  # its edge bundle is registered like a full run's


def test_the_first_batch_is_compared_with_the_first_run_sentence_by_sentence(stream):
    """What the incremental demonstration reports of the first batch after the stream: the last version
    against the first run on the first batch's test sentences."""
    from components.config import load_params
    from flows.incremental_demo import first_batch_paired

    project, _ = stream
    names = {"incremental": "miniaturize-reviews"}
    paired = first_batch_paired(
        load_params(project / "params.yaml"), registry(project), names, "1", {"incremental": "3"}
    )
    first = json.loads((project / "reports" / "update" / "v2.json").read_text())["per_batch"][0]
    last = json.loads((project / "reports" / "update" / "v3.json").read_text())["per_batch"][0]
    assert first["batch"] == last["batch"] == "reviews"
    pair = paired["incremental"]
    assert pair["n"] == first["paired"]["n"] and 0.0 <= pair["p_value"] <= 1.0
    # version 1's accuracy on it (the first update's "before") to version 3's
    assert 100 * (pair["gained"] - pair["lost"]) / pair["n"] == pytest.approx(100 * (last["after"] - first["before"]))


def test_lineage_shows_the_chain_of_updates_back_to_the_first_run(stream, prefect_api):
    project, _ = stream
    chain = json.loads(run_cli(["lineage", "3", "--json"], project, prefect_api).stdout)
    assert [(u["version"], u["kind"], u["batch"]) for u in chain["updates"]] == [
        ("3", "update", "food"),
        ("2", "update", "gadgets"),
        ("1", "full run", "reviews"),
    ]
    assert all(len(u["data_sha256"]) == 64 for u in chain["updates"])
    text = run_cli(["lineage", "3"], project, prefect_api).stdout
    assert "updates, newest first" in text and "full run" in text and "data seen: reviews" in text


def test_batches_and_replay_buffer_are_recorded_by_dvc(stream):
    project, _ = stream
    import yaml

    for name in ("data/batches/gadgets.dvc", "data/batches/food.dvc", "data/replay.dvc"):
        record = yaml.safe_load((project / name).read_text())
        assert record["outs"][0]["md5"].endswith(".dir"), name
    replay = pd.read_parquet(project / "data" / "replay" / "replay.parquet")
    assert len(replay) <= UPDATE["incremental.replay_size"]
    assert set(replay["batch"]) == {"reviews", "gadgets", "food"}
    # every row keeps the soft outputs it was taught by (two labels each), for the next update to distil toward
    assert all(logits is not None and len(logits) == 2 for logits in replay["logits"])
    status = subprocess.run(
        [str(BIN / "dvc"), "status", "data/replay.dvc"], cwd=project, capture_output=True, text=True
    )
    assert status.returncode == 0 and "changed" not in status.stdout, status.stdout


def test_a_batch_with_an_unknown_label_is_refused(stream, prefect_api):
    project, _ = stream
    unknown = run_cli(["update", "--data", "data/unknown.csv"], project, prefect_api)
    assert unknown.returncode == 2, unknown.stdout[-2000:] + unknown.stderr[-2000:]
    assert "'neutral'" in unknown.stderr and "keeps the label set" in unknown.stderr
    assert not (project / "data" / "batches" / "unknown").exists()


def champion(project: Path) -> str:
    return str(registry(project).get_model_version_by_alias("miniaturize-reviews", "champion").version)


def test_a_forgetting_batch_is_refused_and_the_champion_stays(stream, prefect_api):
    project, _ = stream
    before = champion(project)
    # Naive fine-tuning on the batch alone, which learns the flipped labels for certain: with replay and
    # distillation the tiny model may as well keep the old labels (then the gate refuses the update for the new
    # batch's accuracy instead, by the thread count's rounding); here the forgetting itself must be refused.
    done = run_cli(["update", "--data", "data/flipped.csv", "--set", "incremental.method=naive"], project, prefect_api)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "is now @challenger: forgetting gate refused: forgetting" in done.stdout, done.stdout[-2000:]
    assert champion(project) == before
    refused = registry(project).get_model_version_by_alias("miniaturize-reviews", "challenger")
    assert refused.tags["gate_passed"] == "false" and "forgetting" in refused.tags["gate_failed_checks"]
    assert float(refused.tags["incremental.forgetting_points"]) > UPDATE["incremental.max_forgetting_points"]
    # the refused batch is kept as data, the replay buffer stays the champion's
    assert (project / "data" / "batches" / "flipped").is_dir()
    assert "flipped" not in set(pd.read_parquet(project / "data" / "replay" / "replay.parquet")["batch"])


def test_an_update_of_an_older_version_must_not_forget_what_the_champion_knows(stream, prefect_api):
    project, _ = stream
    before = champion(project)
    batch(FOOD_POS, FOOD_NEG, 40, offset=700).to_csv(project / "data" / "food3.csv", index=False)
    # version 1 never learned the gadgets: against it (its parent) nothing is forgotten, against the champion
    # the gadgets are
    args = ["update", "--data", "data/food3.csv", "--from", "models:/miniaturize-reviews/1"]
    done = run_cli(args, project, prefect_api)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"started from version 1, not the champion (version {before})" in done.stdout, done.stdout[-3000:]
    assert "forgetting gate refused: forgetting_vs_champion" in done.stdout, done.stdout[-2000:]
    assert champion(project) == before


def test_a_killed_update_leaves_everything_as_it_was_and_an_unchanged_batch_ends_at_once(stream, prefect_api):
    project, _ = stream
    before = champion(project)
    replay = (project / "data" / "replay" / "replay.parquet").read_bytes()
    batch(FOOD_POS, FOOD_NEG, 40, offset=300).to_csv(project / "data" / "food2.csv", index=False)
    env = os.environ | {"PREFECT_API_URL": prefect_api, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = project / "killed.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(BIN / "miniaturize"), "update", "--data", "data/food2.csv"],
            cwd=project,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 300
        while "update teacher epoch 1" not in log.read_text() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert "update teacher epoch 1" in log.read_text(), log.read_text()[-2000:]
    assert champion(project) == before
    assert not (project / "data" / "batches" / "food2").exists()
    assert (project / "data" / "replay" / "replay.parquet").read_bytes() == replay
    # the next update finds the workspace free again, and a batch the champion has learned ends at once
    again = run_cli(["update", "--data", "data/gadgets.csv"], project, prefect_api)
    assert again.returncode == 0 and "nothing new" in again.stdout and "batch gadgets" in again.stdout, (
        again.stdout[-2000:] + again.stderr[-2000:]
    )
    # ... and marks the killed update's MLflow run KILLED
    assert "was killed before it finished" in again.stdout
    client = registry(project)
    killed = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], filter_string="attributes.status = 'KILLED'"
    )
    assert any("miniaturize.update_of" in run.data.tags for run in killed)
