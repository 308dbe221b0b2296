"""The demonstration's bookkeeping: units recorded as they finish and skipped on a resume (settings that
differ start afresh), the union file keeping each batch's own splits, and settings replaced by dotted key.
The whole demonstration runs end to end with `miniaturize incremental-demo --profile smoke` (docs/measured.md)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from components.config import build_params, load_params
from flows.incremental_demo import (
    Progress,
    mean_of_seeds,
    run_key,
    scratch_seeds_at,
    union_file,
    update_key,
    updated,
    with_settings,
)
from tests.conftest import make_frame, write_prepared
from tests.flows.conftest import REPO


def test_a_finished_unit_is_recorded_and_not_run_again(tmp_path):
    path, ran = tmp_path / "progress.json", []
    progress = Progress(path, {"stream": ["a", "b"]})
    assert progress.unit("0/full-run", "k1", lambda: ran.append(1) or {"version": "1"}) == {"version": "1"}
    resumed = Progress(path, {"stream": ["a", "b"]})
    assert resumed.unit("0/full-run", "k1", lambda: ran.append(2) or {"version": "9"}) == {"version": "1"}
    assert ran == [1] and json.loads(path.read_text())["done"] == {"0/full-run": {"version": "1"}}
    # a failed unit records nothing: it runs again on the next try
    with pytest.raises(RuntimeError):
        resumed.unit("1/incremental", "k2", lambda: (_ for _ in ()).throw(RuntimeError("killed")))
    assert "1/incremental" not in json.loads(path.read_text())["done"]
    # the unit's own settings changed: it runs again, the others stay
    resumed.unit("1/incremental", "k2", lambda: {"version": "2"})
    again = Progress(path, {"stream": ["a", "b"]})
    assert again.unit("1/incremental", "k3", lambda: {"version": "3"}) == {"version": "3"}
    assert again.unit("0/full-run", "k1", lambda: {"version": "9"}) == {"version": "1"}
    # another stream: nothing carried over
    assert Progress(path, {"stream": ["b"]}).done == {}


def test_a_record_with_more_settings_than_given_now_is_resumed(tmp_path):
    """A record written with the scratch seeds among its settings: the same stream resumes it, and more seeds
    run only the new seeds' units (each unit carries its own key)."""
    path = tmp_path / "progress.json"
    old = {
        "settings": {"stream": ["a"], "scratch_seeds": [13]},
        "keys": {"3/scratch/13": "k"},
        "done": {"3/scratch/13": {"v": 1}},
    }
    path.write_text(json.dumps(old))
    progress = Progress(path, {"stream": ["a"]})
    assert progress.unit("3/scratch/13", "k", lambda: {"v": 2}) == {"v": 1}
    assert progress.unit("3/scratch/14", "k", lambda: {"v": 3}) == {"v": 3}
    assert Progress(path, {"stream": ["b"]}).done == {}


def test_only_updates_depend_on_the_incremental_section():
    p = with_settings(build_params({}), incremental__alpha=0.9)
    assert run_key(p) == run_key(build_params({})) != run_key(p, "vader-amazon")
    assert update_key(p, "models:/m/1") != update_key(build_params({}), "models:/m/1")
    assert update_key(p, "models:/m/1") != update_key(p, "models:/m/2")


def test_union_file_keeps_each_batch_and_split(tmp_path):
    a = write_prepared(
        tmp_path / "a", {"train": make_frame(3), "validation": make_frame(1, 10), "test": make_frame(1, 20)}
    )
    b = write_prepared(
        tmp_path / "b", {"train": make_frame(2, 30), "validation": make_frame(1, 40), "test": make_frame(1, 50)}
    )
    union = pd.read_parquet(union_file({"movie": a, "amazon": b}, tmp_path / "out" / "union.parquet"))
    assert union.groupby(["batch", "split"]).size().to_dict() == {
        ("amazon", "test"): 2,
        ("amazon", "train"): 4,
        ("amazon", "validation"): 2,
        ("movie", "test"): 2,
        ("movie", "train"): 6,
        ("movie", "validation"): 2,
    }


def test_with_settings_replaces_dotted_keys_and_validates():
    params = load_params(REPO / "params.yaml")
    changed = with_settings(params, data__source="vader-amazon", seeds__extra=[], seed=14)
    assert (changed.data.source, changed.seeds.extra, changed.seed, params.seed) == ("vader-amazon", [], 14, 13)
    with pytest.raises(ValueError):
        with_settings(changed, seed=15, seeds__extra=[15])  # the same check as any params file


def test_from_scratch_figures_are_averaged_over_seeds():
    runs = {
        13: {"learned": "nyt", "accuracy": {"movie": 0.8, "nyt": 0.6}, "seconds": 100, "examples": 10, "size_bytes": 4},
        14: {"learned": "nyt", "accuracy": {"movie": 0.9, "nyt": 0.7}, "seconds": 300, "examples": 30, "size_bytes": 6},
    }
    mean = mean_of_seeds(runs)
    assert mean["accuracy"] == pytest.approx({"movie": 0.85, "nyt": 0.65}) and mean["seconds"] == 200
    assert mean["learned"] == "nyt" and set(mean["seeds"]) == {"13", "14"} and mean["size_bytes"] == 5
    # a seed recorded before sizes were kept: the mean size is unknown, not a mean of the others
    del runs[14]["size_bytes"]
    assert mean_of_seeds(runs)["size_bytes"] is None
    # a seed that reused its training stages from an earlier run: its seconds are not its model's cost
    runs[13]["reused"] = ["finetune", "distill", "prune"]
    mean = mean_of_seeds(runs)
    assert mean["seconds"] == 300 and mean["reused"] == [] and mean["accuracy"]["movie"] == pytest.approx(0.85)
    runs[14]["reused"] = ["finetune"]  # every seed reused: all counted, and said
    assert mean_of_seeds(runs)["seconds"] == 200 and mean_of_seeds(runs)["reused"] == ["distill", "finetune", "prune"]


def test_an_update_keeps_its_gate_reason_accuracy_size_and_cost():
    report = {
        "gate": {"passed": False},
        "reason": "forgetting: 5.36 points on tweets > 1.00 allowed",
        "per_batch": [{"batch": "movie", "after": 0.8}, {"batch": "nyt", "after": 0.7}],
        "forgetting_points": 5.36,
        "models": {"final": {"size_bytes": 9_000_000}},
        "cost": {"seconds": 77.0, "examples": 9376},
        "wordpieces_restored": 12,
    }
    kept = updated({"version": "3", "alias": "challenger", "batch": "nyt", "report": report})
    assert kept["gate_reason"] == report["reason"] and kept["accuracy"] == {"movie": 0.8, "nyt": 0.7}
    assert (kept["size_bytes"], kept["seconds"], kept["examples"]) == (9_000_000, 77.0, 9376)
    report["gate"]["passed"] = True
    assert updated({"version": "4", "alias": "champion", "batch": "nyt", "report": report})["gate_reason"] is None


def test_first_and_scratch_runs_keep_version_batch_accuracy_and_cost(tmp_path, monkeypatch):
    """The pipeline, the measurement and the registry replaced by stubs: what each run's entry holds."""
    import flows.incremental_demo as demo

    a = write_prepared(
        tmp_path / "a", {"train": make_frame(2), "validation": make_frame(1, 10), "test": make_frame(1, 20)}
    )
    b = write_prepared(
        tmp_path / "b", {"train": make_frame(2, 30), "validation": make_frame(1, 40), "test": make_frame(1, 50)}
    )
    outcome = {
        "registration": {"version": "7"},
        "stages": {
            "finetune": {"metrics": {"examples": 5}},
            "distill": {"metrics": {}},
            "prune": {"metrics": {"examples": 2}},
        },
    }
    sources = []
    monkeypatch.setattr(demo, "pipeline", lambda p, root, run_name: sources.append(p.data.source) or outcome)
    monkeypatch.setattr(demo, "accuracies", lambda model, batches, p: {name: 0.5 for name in batches})
    monkeypatch.setattr(demo, "batch_folders", lambda version, model, client, into: {"movie": a, "amazon": b})
    params = load_params(REPO / "params.yaml")
    final = demo.TASK.workspace(tmp_path).final
    final.mkdir(parents=True)
    (final / "model.onnx").write_bytes(b"x" * 300)
    (final / "tokenizer.json").write_text("{}")  # not a weight file: not counted
    first = demo.first_run(params, tmp_path, None)
    assert first["version"] == "7" and first["learned"] == "movie" and first["examples"] == 7
    assert first["size_bytes"] == 300 and first["reused"] == []
    outcome["stages"]["finetune"]["cache_hit"] = True  # the teacher's stage reused from an earlier run
    assert demo.first_run(params, tmp_path, None)["reused"] == ["finetune"]
    assert first["accuracy"] == {"movie": 0.5, "amazon": 0.5} and first["seconds"] >= 0
    scratch = demo.scratch_run(params, tmp_path, None, "m", "7", 1)
    assert scratch["learned"] == "amazon" and sources[-1] == "data/stream/union-1.parquet"
    assert (tmp_path / "data" / "stream" / "union-1.parquet").is_file()


def test_from_scratch_runs_after_every_update_or_only_the_last():
    seeds = [13, 14, 15]
    assert [scratch_seeds_at(step, 3, seeds, "all") for step in (1, 2, 3)] == [[13], [13], seeds]
    assert [scratch_seeds_at(step, 3, seeds, "last") for step in (1, 2, 3)] == [[], [], seeds]


def test_the_stream_runs_from_scratch_with_their_own_overrides_only(tmp_path, monkeypatch):
    """The runs replaced by stubs that record their params: `--scratch-set` reaches the from-scratch runs, not
    the first run or the updates, and the results name it."""
    import flows.incremental_demo as demo
    import flows.tracking

    seen: dict[str, list] = {"first": [], "update": [], "scratch": []}

    def result(version: str, learned: str) -> dict:
        accuracy = {"movie": 0.8, "amazon": 0.7}
        return {"version": version, "learned": learned, "accuracy": accuracy, "seconds": 1.0, "examples": 1}

    monkeypatch.setattr(flows.tracking, "client", lambda root: None)
    monkeypatch.setattr(demo, "first_run", lambda p, root, client: seen["first"].append(p) or result("1", "movie"))
    monkeypatch.setattr(
        demo,
        "update_run",
        lambda p, root, source, step, method, start: seen["update"].append(p) or result("2", "amazon"),
    )
    monkeypatch.setattr(
        demo,
        "scratch_run",
        lambda p, root, client, model, version, step: seen["scratch"].append(p) or result("1", "amazon"),
    )
    compared = []
    monkeypatch.setattr(
        demo,
        "first_batch_paired",
        lambda p, client, names, first, last: compared.append((first, last)) or {"incremental": {"n": 1}},
    )
    params = load_params(REPO / "params.yaml")
    results = demo.run_demo(
        params,
        tmp_path,
        [13, 14],
        ("vader-movie", "vader-amazon", "vader-tweets"),
        "last",
        ["prune.accuracy_budget_points=null"],
    )
    assert [p.prune.accuracy_budget_points for p in seen["scratch"]] == [None, None]
    assert [p.seed for p in seen["scratch"]] == [13, 14]
    assert all(p.prune.accuracy_budget_points == "auto" for p in seen["first"] + seen["update"])
    assert results["scratch_settings"] == ["prune.accuracy_budget_points=null"]
    assert results["steps"][1]["scratch"] is None  # --scratch-steps last: after the last update only
    assert results["steps"][2]["scratch"]["accuracy"] == {"movie": 0.8, "amazon": 0.7}
    # each method's last version compared with the first run on the first batch, sentence by sentence
    assert compared == [("1", {"incremental": "2", "naive": "2"})]
    assert results["first_batch_paired"] == {"incremental": {"n": 1}}
