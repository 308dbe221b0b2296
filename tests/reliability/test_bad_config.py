"""Bad params are refused before anything is computed, with a message that names the key and the problem.

Schema cases (unknown keys, wrong types, impossible values) go through `load_params`; the cases that need
the teacher (a path that does not exist, a hub id while offline, more student layers than the teacher
has) through the task's pre-flight check (`Task.preflight`), which reads only the teacher's config.json. Two cases run
`miniaturize run` in a throwaway project: exit code 2, the message on stderr, nothing written.

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q tests/reliability/test_bad_config.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from components.config import ConfigError, load_params
from flows.tasks import task_for
from tests.flows.conftest import make_project, run_cli

REPO = Path(__file__).resolve().parents[2]
CLASSIFICATION = REPO / "params.yaml"
CAUSAL_LM = REPO / "configs" / "causal-lm.yaml"
PRETRAINED_LM = ["lm.teacher.init=pretrained"]
OFFLINE = "offline.*cannot be reached.*not in the local Hugging Face cache"

SCHEMA_CASES = [
    # unknown keys
    ("unknown section", CLASSIFICATION, ["teachr.epochs=2"], r"unknown key 'teachr'"),
    ("unknown key", CLASSIFICATION, ["distill.alfa=0.3"], r"unknown key 'distill\.alfa'"),
    ("unknown nested key", CLASSIFICATION, ["register.gate.max_drop=1"], r"unknown key 'register\.gate\.max_drop'"),
    ("unknown lm key", CAUSAL_LM, ["lm.distill.layer=[0]"], r"unknown key 'lm\.distill\.layer'"),
    # wrong types
    ("text for an int", CLASSIFICATION, ["teacher.epochs=two"], r"teacher\.epochs: Input should be a valid integer"),
    ("fraction for an int", CLASSIFICATION, ["teacher.epochs=2.5"], r"teacher\.epochs: .*fractional part"),
    ("text for a list", CLASSIFICATION, ["distill.layers=abc"], r"distill\.layers: Input should be a valid list"),
    ("number for a string", CLASSIFICATION, ["teacher.model=5"], r"teacher\.model: Input should be a valid string"),
    ("value for a section", CLASSIFICATION, ["distill=3"], r"distill: Input should be a valid dictionary"),
    ("unknown choice", CLASSIFICATION, ["quantize.preset=avx9000"], r"quantize\.preset: Input should be 'auto'"),
    ("text for a number", CAUSAL_LM, ["lm.distill.alpha=half"], r"lm\.distill\.alpha: Input should be a valid number"),
    # impossible values
    ("alpha above 1", CLASSIFICATION, ["distill.alpha=1.5"], r"distill\.alpha: .*less than or equal to 1 \(got 1\.5\)"),
    ("alpha below 0", CLASSIFICATION, ["distill.alpha=-0.1"], r"distill\.alpha: .*greater than or equal to 0"),
    ("lm alpha above 1", CAUSAL_LM, ["lm.distill.alpha=2"], r"lm\.distill\.alpha: .*less than or equal to 1"),
    ("head ratio 1", CLASSIFICATION, ["prune.head_ratio=1.0"], r"prune\.head_ratio: Input should be less than 1"),
    ("ffn ratio above 1", CLASSIFICATION, ["prune.ffn_ratio=1.2"], r"prune\.ffn_ratio: Input should be less than 1"),
    ("lm ffn ratio 1", CAUSAL_LM, ["lm.prune.ffn_ratio=1.0"], r"lm\.prune\.ffn_ratio: Input should be less than 1"),
    ("lm head ratio 1", CAUSAL_LM, ["lm.prune.head_ratio=1.0"], r"lm\.prune\.head_ratio: Input should be less than 1"),
    (
        "search prune ratio 1",
        CLASSIFICATION,
        ["search.prune_ratios=[0.5,1.0]"],
        r"search\.prune_ratios must be in \[0, 1\)",
    ),
    ("layers not increasing", CLASSIFICATION, ["distill.layers=[2,0]"], r"distill\.layers must be increasing"),
    (
        "lm student deeper than scratch teacher",
        CAUSAL_LM,
        ["lm.distill.layers=[0,2,9]"],
        r"lm\.distill\.layers \[0, 2, 9\] must be distinct teacher blocks 0\.\.5",
    ),
    (
        "export tolerance below 0",
        CLASSIFICATION,
        ["export.max_abs_logit_diff=-1"],
        r"export\.max_abs_logit_diff: Input should be greater than 0",
    ),
    (
        "quantize tolerance below 0",
        CLASSIFICATION,
        ["quantize.max_drop_vs_fp32_points=-0.5"],
        r"quantize\.max_drop_vs_fp32_points: .*greater than or equal to 0",
    ),
    (
        "gate tolerance below 0",
        CLASSIFICATION,
        ["register.gate.max_drop_vs_teacher_points=-1"],
        r"register\.gate\.max_drop_vs_teacher_points: .*greater than or equal to 0",
    ),
    (
        "champion tolerance below 0",
        CLASSIFICATION,
        ["register.gate.max_drop_vs_champion_points=-0.1"],
        r"register\.gate\.max_drop_vs_champion_points: .*greater than or equal to 0",
    ),
    (
        "search tolerance below 0",
        CLASSIFICATION,
        ["search.max_drop_vs_teacher_points=-1"],
        r"search\.max_drop_vs_teacher_points: .*greater than or equal to 0",
    ),
    (
        "lm gate tolerance below 0",
        CAUSAL_LM,
        ["lm.gate.max_bleu_drop_points=-1"],
        r"lm\.gate\.max_bleu_drop_points: .*greater than or equal to 0",
    ),
    ("pretrained lm without a model", CAUSAL_LM, PRETRAINED_LM, r"lm\.teacher\.model is required"),
]


@pytest.mark.parametrize(
    "params_file, overrides, message", [case[1:] for case in SCHEMA_CASES], ids=[case[0] for case in SCHEMA_CASES]
)
def test_schema_refuses_with_a_message_naming_the_key(params_file, overrides, message):
    with pytest.raises(ConfigError, match=message) as refused:
        load_params(params_file, overrides=overrides)
    # One short line, not a dump of the section the check looked at.
    assert len(str(refused.value)) < 300 and "\n" not in str(refused.value)


def test_the_shipped_params_pass_both_checks(tmp_path):
    for params_file in (CLASSIFICATION, CAUSAL_LM):
        params = load_params(params_file)
        task_for(params).preflight(params, tmp_path, True)


@pytest.fixture(scope="module")
def tiny_gpt2_config_dir(tmp_path_factory) -> Path:
    """A random 2-block GPT-2 (its config.json is all the pre-flight check reads)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    out = tmp_path_factory.mktemp("tiny_gpt2_config")
    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2)).save_pretrained(out)
    return out


@pytest.fixture
def project(tmp_path, tiny_model_dir) -> Path:
    """A project folder whose ./models/tiny is the 2-layer BERT."""
    shutil.copytree(tiny_model_dir, tmp_path / "models" / "tiny")
    return tmp_path


def preflight_case(params_file: Path, overrides: list[str], root: Path, search: bool = False) -> None:
    params = load_params(params_file, overrides=overrides)
    task_for(params).preflight(params, root, search)


def test_student_layers_beyond_the_teachers_depth_are_refused(project, tiny_model_dir):
    for teacher in ("./models/tiny", str(tiny_model_dir)):  # relative to the project, and absolute
        preflight_case(CLASSIFICATION, [f"teacher.model={teacher}", "distill.layers=[0,1]"], project)
        with pytest.raises(
            ConfigError,
            match=r"distill\.layers \[0, 2\] asks for layer 2, but the teacher "
            rf"{teacher} has 2 layers \(0\.\.1\)",
        ):
            preflight_case(CLASSIFICATION, [f"teacher.model={teacher}", "distill.layers=[0,2]"], project)


def test_the_default_teacher_is_read_from_its_packaged_copy(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"distill\.layers \[0, 2, 9\] asks for layer 9, but the teacher "
        r"sentence-transformers/all-MiniLM-L6-v2 has 6 layers \(0\.\.5\)",
    ):
        preflight_case(CLASSIFICATION, ["distill.layers=[0,2,9]"], tmp_path)


@pytest.mark.parametrize(
    "config, depth",
    [
        ({"model_type": "bert", "num_hidden_layers": 6}, 6),
        ({"model_type": "gpt2", "n_layer": 4}, 4),
        ({"model_type": "distilbert", "n_layers": 3}, 3),
        ({"n_layer": 4}, None),  # no model_type: transformers reads it and says what is wrong
        ({"model_type": "bert"}, None),  # no layer count under a known key: transformers reads it
        ("not json", None),
    ],
)
def test_a_local_config_json_gives_the_depth_without_transformers(tmp_path, config, depth):
    import json

    from flows.preflight import local_depth

    text = config if isinstance(config, str) else json.dumps(config)
    (tmp_path / "config.json").write_text(text)
    assert local_depth(tmp_path) == depth
    assert local_depth(tmp_path / "missing") is None


def test_search_layers_are_checked_for_search_only(project):
    overrides = ["teacher.model=./models/tiny", "distill.layers=[0]", "search.layers=[[0],[0,3]]"]
    preflight_case(CLASSIFICATION, overrides, project)  # `run` does not use search.layers
    with pytest.raises(ConfigError, match=r"search\.layers \[0, 3\] asks for layer 3, but the teacher"):
        preflight_case(CLASSIFICATION, overrides, project, search=True)


def test_lm_student_layers_beyond_a_pretrained_teachers_depth_are_refused(tiny_gpt2_config_dir, tmp_path):
    teacher = f"lm.teacher.model={tiny_gpt2_config_dir}"
    preflight_case(CAUSAL_LM, [*PRETRAINED_LM, teacher, "lm.distill.layers=[0,1]"], tmp_path)
    with pytest.raises(
        ConfigError,
        match=r"lm\.distill\.layers \[0, 2, 4\] asks for layer 4, but the teacher .* "
        r"has 2 layers \(0\.\.1\)",
    ):
        preflight_case(CAUSAL_LM, [*PRETRAINED_LM, teacher, "lm.distill.layers=[0,2,4]"], tmp_path)


MISSING_TEACHERS = [
    (CLASSIFICATION, [], "teacher.model=./models/nope", r"teacher\.model: model path \./models/nope does not exist"),
    (CLASSIFICATION, [], "teacher.model=/abs/nope", r"teacher\.model: model path /abs/nope does not exist"),
    (
        CAUSAL_LM,
        PRETRAINED_LM,
        "lm.teacher.model=./models/nope",
        r"lm\.teacher\.model: model path \./models/nope does not exist",
    ),
    (CLASSIFICATION, [], "teacher.model=someone/not-cached-model", rf"teacher\.model: .*{OFFLINE}"),
    (CAUSAL_LM, PRETRAINED_LM, "lm.teacher.model=someone/not-cached-lm", rf"lm\.teacher\.model: .*{OFFLINE}"),
]


@pytest.mark.parametrize(
    "params_file, extra, teacher, message",
    MISSING_TEACHERS,
    ids=["relative path", "absolute path", "lm path", "hub id offline", "lm hub id offline"],
)
@pytest.mark.parametrize("offline_variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_a_teacher_that_cannot_be_had_is_refused(
    params_file, extra, teacher, message, offline_variable, tmp_path, monkeypatch
):
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(offline_variable, "1")
    with pytest.raises(ConfigError, match=message):
        preflight_case(params_file, [*extra, teacher], tmp_path)


def test_a_model_folder_without_config_json_is_refused(project):
    (project / "models" / "tiny" / "config.json").unlink()
    with pytest.raises(ConfigError, match=r"teacher\.model: model directory .*tiny has no config\.json"):
        preflight_case(CLASSIFICATION, ["teacher.model=./models/tiny"], project)


def test_a_hub_id_in_the_local_cache_passes_offline(tiny_model_dir, tmp_path, monkeypatch):
    """Offline, a hub id is fine when the Hugging Face cache holds it: its config.json gives the depth."""
    import huggingface_hub.constants
    import transformers.utils.hub

    cache, commit = tmp_path / "hub", "0" * 40
    repo = cache / "models--someone--cached-model"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(transformers.utils.hub, "TRANSFORMERS_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    preflight_case(CLASSIFICATION, ["teacher.model=someone/cached-model", "distill.layers=[0,1]"], tmp_path)
    with pytest.raises(ConfigError, match=r"asks for layer 2, but the teacher someone/cached-model has 2 layers"):
        preflight_case(CLASSIFICATION, ["teacher.model=someone/cached-model", "distill.layers=[0,2]"], tmp_path)


def test_a_hub_that_cannot_be_reached_online_says_so(tmp_path, monkeypatch):
    """No offline variable set, but the connection fails: huggingface_hub's LocalEntryNotFoundError, which
    transformers wraps in an OSError, becomes a sentence about the hub and the cache."""
    from huggingface_hub.errors import LocalEntryNotFoundError
    from transformers import AutoConfig

    def unreachable(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files") from LocalEntryNotFoundError(
            "connection error"
        )

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(AutoConfig, "from_pretrained", unreachable)
    with pytest.raises(
        ConfigError,
        match=r"teacher\.model: the Hugging Face hub cannot be reached \(there is no "
        r"connection\) and 'someone/model' is not in the local Hugging Face cache",
    ):
        preflight_case(CLASSIFICATION, ["teacher.model=someone/model"], tmp_path)


def snapshot(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if "__pycache__" not in p.parts}


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "distill.alpha=1.5",
            "error: invalid params: distill.alpha: Input should be less than or equal to 1 (got 1.5)",
        ),
        ("teacher.model=./models/nope", "error: teacher.model: model path ./models/nope does not exist"),
    ],
    ids=["schema", "preflight"],
)
def test_cli_exits_2_and_writes_nothing(override, message, tmp_path):
    root = make_project(tmp_path / "project")
    before = snapshot(root)
    # An API nobody answers: a refused run must not get as far as Prefect.
    done = run_cli(["run", "--set", override], root, "http://127.0.0.1:9/api", timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == message
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert snapshot(root) == before
    assert not (root / "data" / "prepared").exists() and not (root / "mlflow.db").exists()
