import pytest

from components.config import ConfigError, build_params, load_params, parse_override, section_hash

RAW = {"distill": {"alpha": 0.4}, "profiles": {"smoke": {"distill.epochs": 1, "data.max_rows": 50}}}


def test_repository_params_file_is_valid_with_every_profile():
    params = load_params("params.yaml")
    assert params.register_.model_name is None and params.registered_model_name() == "miniaturize-sentiment"
    smoke = load_params("params.yaml", profile="smoke")
    assert smoke.data.max_rows is not None and smoke.teacher.epochs == 1


def test_the_files_own_profile_key_names_a_profile_and_the_option_wins():
    """`profile: smoke` in the file is what `dvc exp run -S profile=smoke` writes; `--profile` still wins."""
    raw = RAW | {"profile": "smoke", "profiles": RAW["profiles"] | {"other": {"distill.epochs": 2}}}
    assert build_params(raw).distill.epochs == 1 and build_params(raw).data.max_rows == 50
    assert build_params(raw, profile="other").distill.epochs == 2
    assert build_params(RAW | {"profile": None}).distill.epochs == build_params(RAW).distill.epochs
    with pytest.raises(ConfigError, match="unknown profile 'fast'"):
        build_params(RAW | {"profile": "fast"})


def test_profile_then_overrides_apply_in_order():
    params = build_params(RAW, profile="smoke", overrides=["distill.epochs=4", "distill.layers=[0, 5]"])
    assert params.distill.epochs == 4 and params.distill.layers == [0, 5] and params.distill.alpha == 0.4
    assert params.data.max_rows == 50


@pytest.mark.parametrize(
    "override, needle",
    [
        ("distill.alphaa=0.3", "unknown key 'distill.alphaa'"),
        ("distill.alpha=1.5", "distill.alpha"),
        ("prune.head_ratio=1.0", "prune.head_ratio"),
        ("register.gate.max_drop_vs_teacher_points=-1", "register.gate.max_drop_vs_teacher_points"),
        ("teacher.epochs=many", "teacher.epochs"),
        ("distill.layers=[2, 1]", "distill.layers"),
        ("data.split=[0.5, 0.5, 0.5]", "data.split"),
        ("evaluate.rounds=0", "evaluate.rounds"),
        ("nonsense", "key=value"),
    ],
)
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace(".", r"\.")):
        build_params(RAW, overrides=[override])


@pytest.mark.parametrize(
    "old, new",
    [
        ("quantize.max_accuracy_drop_points", "quantize.max_drop_vs_fp32_points"),
        ("search.max_accuracy_drop_points", "search.max_drop_vs_teacher_points"),
        ("register.gate.max_accuracy_drop_points", "register.gate.max_drop_vs_teacher_points"),
    ],
)
def test_a_renamed_key_names_its_new_name(old, new):
    with pytest.raises(ConfigError, match=rf"unknown key '{old}' \(renamed: use '{new}'\)"):
        build_params(RAW, overrides=[f"{old}=1.0"])
    assert build_params(RAW, overrides=[f"{new}=1.0"])


def test_unknown_profile_lists_known_ones():
    with pytest.raises(ConfigError, match="unknown profile 'fast'.*smoke"):
        build_params(RAW, profile="fast")


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_params(tmp_path / "nope.yaml")


def test_parse_override_reads_yaml_values():
    assert parse_override("a.b=0.5") == ("a.b", 0.5)
    assert parse_override("a=[1, 2]") == ("a", [1, 2])
    assert parse_override("a=hello") == ("a", "hello")


def test_section_hash_is_stable_and_sensitive():
    a, b = build_params(RAW), build_params(RAW, overrides=["distill.alpha=0.6"])
    assert section_hash(a.distill) == section_hash(build_params(RAW).distill)
    assert section_hash(a.distill) != section_hash(b.distill)
    assert section_hash(a.teacher) == section_hash(b.teacher)


def test_extra_seeds_must_differ_from_the_runs_seed():
    with pytest.raises(ConfigError, match="repeats the run's own seed 13"):
        build_params({}, overrides=["seeds.extra=[13, 14]"])
    with pytest.raises(ConfigError, match="distinct"):
        build_params({}, overrides=["seeds.extra=[14, 14]"])


def test_causal_lm_config_refuses_head_pruning_it_cannot_export_and_student_layers_it_lacks():
    from components.config import ConfigError, build_params, load_params

    params = load_params("configs/causal-lm.yaml")
    assert params.task == "causal-lm" and params.lm.prune.ffn_ratio == 0.75
    assert load_params("configs/causal-lm.yaml", "smoke").lm.teacher.architecture.n_layer == 3
    with pytest.raises(ConfigError, match="head_ratio > 0 cannot be exported"):
        build_params({"task": "causal-lm", "lm": {"prune": {"head_ratio": 0.25}}})
    with pytest.raises(ConfigError, match=r"lm.distill.layers \[0, 7\] must be distinct teacher blocks 0..5"):
        build_params({"lm": {"distill": {"layers": [0, 7]}}})


@pytest.mark.parametrize("key", ["weights", "student_weights"])
def test_multitask_loss_weights_must_name_declared_tasks(key):
    raw = {"task": "multitask", "multitask": {key: {"sentiment": 2.0, "topic": 1.0}}}
    with pytest.raises(ConfigError, match=f"multitask.{key} names topic"):
        build_params(raw)


def test_evaluate_rounds_in_the_repository_configs():
    """Latency is timed in rounds; the smoke profiles keep two, and every round still gets a call."""
    for path, calls in (("params.yaml", 200), ("configs/multitask.yaml", 300)):
        default, smoke = load_params(path).evaluate, load_params(path, profile="smoke").evaluate
        assert default.rounds == 5 and default.batch1_calls == calls and smoke.rounds == 2
        assert min(smoke.batch1_calls, smoke.batch32_calls) >= smoke.rounds


@pytest.mark.parametrize(
    "raw, name",
    [
        ({}, "miniaturize-sentiment"),  # the default job keeps its name
        ({"data": {"source": "data/topics.csv"}}, "miniaturize-topics"),
        ({"data": {"source": "data/My Topics (v2).CSV"}}, "miniaturize-my-topics-v2"),  # sanitised
        ({"data": {"source": "vader-amazon"}}, "miniaturize-vader-amazon"),  # other built-in data: its own model
        ({"data": {"source": "org/reviews"}}, "miniaturize-reviews"),  # a hub dataset id
        ({"task": "causal-lm"}, "miniaturize-causal-lm"),
        ({"task": "causal-lm", "lm": {"data": {"source": "data/corpus.txt"}}}, "miniaturize-causal-lm-corpus"),
        ({"task": "multitask", "data": {"source": "vader-all"}}, "miniaturize-multitask"),
        ({"task": "multitask", "data": {"source": "data/topics.csv"}}, "miniaturize-multitask-topics"),
        ({"data": {"source": "data/topics.csv"}, "register": {"model_name": "mine"}}, "mine"),  # given: it wins
    ],
)
def test_the_registered_model_is_named_after_its_task_and_data(raw, name):
    assert build_params(raw).registered_model_name() == name


def test_the_repository_configs_name_their_own_models():
    names = {f: load_params(f).registered_model_name() for f in ("configs/causal-lm.yaml", "configs/multitask.yaml")}
    assert names == {
        "configs/causal-lm.yaml": "miniaturize-causal-lm",
        "configs/multitask.yaml": "miniaturize-multitask",
    }


def test_an_update_keeps_the_name_of_the_model_it_continues():
    """`miniaturize update --data week-50.csv` never names a model after its batch: it continues its champion's,
    unless a name is given (the incremental demo's ablation chains)."""
    ran_on_topics = build_params({"data": {"source": "data/topics.csv"}})
    assert ran_on_topics.registered_model_name(continuing="miniaturize-topics") == "miniaturize-topics"
    assert ran_on_topics.registered_model_name(continuing="miniaturize-sentiment") == "miniaturize-sentiment"
    named = build_params({"register": {"model_name": "demo-stream-naive"}})
    assert named.registered_model_name(continuing="demo-stream") == "demo-stream-naive"


def test_a_data_source_keeps_its_id_across_versions_of_its_file():
    from components.config import data_source_id

    assert data_source_id("data/topics.csv") == data_source_id("/elsewhere/topics.csv") == "topics"
    assert data_source_id("vader-movie") == "vader-movie" and data_source_id("data/week-12.parquet") == "week-12"


def test_the_prune_budget_is_auto_a_number_or_null():
    assert load_params("params.yaml").prune.accuracy_budget_points == "auto"
    assert build_params({}, overrides=["prune.accuracy_budget_points=0.8"]).prune.accuracy_budget_points == 0.8
    assert build_params({}, overrides=["prune.accuracy_budget_points=null"]).prune.accuracy_budget_points is None
    with pytest.raises(ConfigError, match="prune.accuracy_budget_points"):
        build_params({}, overrides=["prune.accuracy_budget_points=-1"])
