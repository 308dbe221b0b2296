"""The command line's answers to bad input: a message naming the problem and a distinct exit code."""

import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent / "miniaturize"
REPO = Path(__file__).resolve().parents[2]


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_bad_params_exit_2_naming_each_key():
    done = run("run", "--set", "distill.alpha=3", "--set", "foo.bar=1")
    assert done.returncode == 2
    assert "distill.alpha" in done.stderr and "unknown key 'foo'" in done.stderr


def test_missing_data_file_and_unknown_stage_and_profile(tmp_path):
    done = run("run", "--data", str(tmp_path / "nope.csv"))
    assert done.returncode == 2 and "does not exist" in done.stderr
    done = run("stage", "bogus")
    assert done.returncode == 2 and "unknown stage 'bogus'" in done.stderr
    done = run("run", "--profile", "fastest")
    assert done.returncode == 2 and "unknown profile 'fastest'" in done.stderr


def test_the_commands_that_train_nothing_start_without_torch():
    """What lineage, promote, rollback and a run whose stages are all cached load (the CLI, the task records,
    the registry, the teacher's depth from its config.json) imports neither torch nor transformers, which take
    seconds to import; the stages that train import them when they run. Nor does an update up to its refusals
    (the batch ingested, its labels checked, validated), so a batch it refuses or has seen ends at once."""
    code = (
        "import sys, flows.cli, flows.tasks, flows.registry, flows.preflight, flows.update, components.kit.batches, "
        "components.classification.ingest, components.validate; "
        "flows.preflight.teacher_depth('teacher.model', 'sentence-transformers/all-MiniLM-L6-v2', '.'); "
        "import flows.pipeline; from components.config import build_params; from flows.tasks import TASKS; "
        "[flows.pipeline.run_tags(n, s, 'k', 'p', None, build_params({})) for n, s in TASKS['sequence-classification'].stages.items()]; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# ------------------------------------------------------------------ one set of exit codes for every command


def invoke(monkeypatch, *args: str):
    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.chdir(REPO)
    return CliRunner().invoke(app, list(args))


def raiser(err: BaseException):
    def call(*_args, **_kwargs):
        raise err

    return call


def failures():
    from components.config import ConfigError
    from components.kit.data import DataError
    from components.kit.promotion import RollbackError
    from flows.lock import WorkspaceLocked
    from flows.registry import GateRejected
    from flows.retries import TrackingUnavailable

    return {
        2: DataError("bad data"),
        3: None,
        4: GateRejected("gate"),
        5: WorkspaceLocked("held by pid 1"),
        6: TrackingUnavailable("MLflow did not answer"),
        1: RuntimeError("boom"),
        "config": ConfigError("distill.alpha: bad"),
        "rollback": RollbackError("no earlier champion"),
    }


def test_exit_code_maps_each_kind_of_failure():
    from components.validate import ValidationFailed
    from flows.cli import exit_code

    cases = failures()
    assert exit_code(cases[2], "x")[0] == 2 and exit_code(cases["config"], "x")[0] == 2
    assert exit_code(ValidationFailed("3 expectations failed", Path("validation.json")), "x")[0] == 3
    assert exit_code(cases[4], "x")[0] == 4 and exit_code(cases["rollback"], "x")[0] == 4
    assert exit_code(cases[5], "x")[0] == 5
    assert exit_code(cases[6], "x") == (6, "error: x stopped: MLflow did not answer")
    assert exit_code(cases[1], "x") == (1, "error: x failed: RuntimeError: boom")


def test_promote_rollback_and_stage_share_the_exit_codes(monkeypatch):
    import flows.registry
    from flows import tracking

    for code in (5, 6):
        monkeypatch.setattr(flows.registry, "promote", raiser(failures()[code]))
        assert invoke(monkeypatch, "promote", "--version", "1").exit_code == code
        monkeypatch.setattr(flows.registry, "rollback", raiser(failures()[code]))
        assert invoke(monkeypatch, "rollback").exit_code == code
        monkeypatch.setattr(tracking, "client", raiser(failures()[code]))
        assert invoke(monkeypatch, "stage", "evaluate").exit_code == code
    monkeypatch.setattr(flows.registry, "promote", raiser(failures()[1]))
    done = invoke(monkeypatch, "promote", "--version", "1")
    assert done.exit_code == 1 and "Traceback" in done.output and "RuntimeError: boom" in done.output


def test_help_lists_the_exit_codes(monkeypatch):
    done = invoke(monkeypatch, "--help")
    assert done.exit_code == 0
    for meaning in ("3 data validation failed", "5 another run holds the workspace", "6 the MLflow tracking"):
        assert meaning in " ".join(done.output.split()), meaning


def test_search_prints_the_tracking_uri_redacted(monkeypatch):
    import contextlib

    import flows.prefect_api
    import flows.search

    outcome = {
        "registration": {"model_uri": "models:/m/1", "alias": "champion", "reason": "fastest"},
        "chosen": "c1",
        "reason": "fastest within tolerance",
        "front": ["c1"],
        "reports": "reports/search",
        "tracking_uri": "http://alice:s3cret-pass@mlflow.example:5000",
        "parent_run_id": "abc",
    }
    monkeypatch.setattr(flows.search, "search", lambda *args, **kwargs: outcome)
    monkeypatch.setattr(flows.prefect_api, "temporary_api", contextlib.nullcontext)  # no flow runs here
    done = invoke(monkeypatch, "search", "--profile", "smoke")
    assert done.exit_code == 0, done.output
    assert "s3cret-pass" not in done.output and "mlflow.example" in done.output


def test_bench_and_search_refuse_a_task_they_do_not_handle(monkeypatch):
    done = invoke(monkeypatch, "bench", "--config", "configs/causal-lm.yaml")
    assert done.exit_code == 2 and "does not re-measure causal-lm models" in done.output
    done = invoke(monkeypatch, "search", "--config", "configs/causal-lm.yaml")
    assert done.exit_code == 2 and "compresses sequence-classification models" in done.output


def test_incremental_demo_refuses_bad_seeds_and_scratch_steps(monkeypatch):
    done = invoke(monkeypatch, "incremental-demo", "--scratch-seeds", "13,x")
    assert done.exit_code == 2 and "not a comma-separated list of integers" in done.output
    done = invoke(monkeypatch, "incremental-demo", "--scratch-steps", "some")
    assert done.exit_code == 2 and "--scratch-steps 'some' is not one of all, last" in done.output
    # the from-scratch runs' own overrides are validated like --set, before anything runs
    done = invoke(monkeypatch, "incremental-demo", "--scratch-set", "prune.no_such_key=1")
    assert done.exit_code == 2 and "no_such_key" in done.output


def test_incremental_demo_passes_the_from_scratch_overrides(monkeypatch):
    import flows.cli as cli
    from flows.incremental_demo import scratch_params

    seen = {}
    monkeypatch.setattr(cli, "preflight", lambda task, params: None)

    def run_flow(flow, params, root, what, **options):
        seen.update(options, params=params)
        raise SystemExit(4)

    monkeypatch.setattr(cli, "run_flow", run_flow)
    args = ("--scratch-set", "prune.accuracy_budget_points=null", "--scratch-set", "distill.deeper_layers=[]")
    assert invoke(monkeypatch, "incremental-demo", "--set", "seed=14", *args).exit_code == 4
    assert seen["scratch_settings"] == ["prune.accuracy_budget_points=null", "distill.deeper_layers=[]"]
    scratch = scratch_params(seen["params"], seen["scratch_settings"])
    assert scratch.prune.accuracy_budget_points is None and scratch.distill.deeper_layers == []
    assert scratch.seed == 14  # --set applies to them too
    assert seen["params"].prune.accuracy_budget_points == "auto"  # the other runs keep the params as given
    assert invoke(monkeypatch, "incremental-demo").exit_code == 4 and seen["scratch_settings"] == []
    assert scratch_params(seen["params"], []) is seen["params"]


def test_promote_rollback_and_lineage_act_on_the_model_of_the_data_given(monkeypatch, tmp_path):
    """`run --data topics.csv` registers miniaturize-topics: `--data` points promote, rollback and lineage at it,
    and without it they act on the params' own data's model."""
    import flows.registry

    seen = []

    def record(*args, **kwargs):
        params = next(a for a in args if hasattr(a, "registered_model_name"))
        seen.append(params.registered_model_name())
        raise failures()[4]

    for command in ("promote", "rollback", "lineage"):
        monkeypatch.setattr(flows.registry, command, record)
    topics = tmp_path / "topics.csv"
    topics.write_text("text,label\na,b\n")
    monkeypatch.setattr("flows.preflight.data_source", lambda data, root: "data/topics.csv")
    for args in (["promote", "--version", "2"], ["rollback"], ["lineage", "2"]):
        assert invoke(monkeypatch, *args, "--data", str(topics)).exit_code == 4
        assert invoke(monkeypatch, *args).exit_code == 4
    assert seen == ["miniaturize-topics", "miniaturize-sentiment"] * 3
