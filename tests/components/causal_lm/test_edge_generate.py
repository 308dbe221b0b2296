"""Causal-LM edge bundle: the files and manifest, a greedy continuation equal to Optimum's
`ORTModelForCausalLM.generate` token for token, the --jsonl mode, tamper detection, and predict.py in a fresh
virtual environment that holds only onnxruntime, tokenizers and numpy."""

from __future__ import annotations

import inspect
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from components import bundle
from components.causal_lm import edge_generate
from components.causal_lm.edge_generate import BundleError, Generator, past_shape
from components.classification import edge_predict

PROMPTS = ["the film was", "a very dull script and", "music, cast and plot number 7"]
NEW_TOKENS = 12
WORDS = (
    "the a film movie was great dull funny warm long short script acting cast plot scene music and but very quite not"
).split()


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + f" number {i}." for i in range(n)]


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """A random 2-layer, 4-head, 32-wide GPT-2 with a byte-level BPE trained on 200 sentences, exported with
    its key/value cache and quantized to dynamic int8 (the causal-LM final model's format)."""
    import torch
    from optimum.exporters.onnx import main_export
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    from components.causal_lm.data import train_tokenizer
    from components.causal_lm.train import scratch_model
    from components.config import LMArchitecture, LMTeacherConfig

    root = tmp_path_factory.mktemp("tiny_lm")
    tokenizer = train_tokenizer(sentences(200), vocab_size=500, min_frequency=1)
    torch.manual_seed(0)
    architecture = LMArchitecture(n_layer=2, n_head=4, n_embd=32, n_positions=64)
    scratch_model(LMTeacherConfig(architecture=architecture), tokenizer).save_pretrained(
        root / "hf", safe_serialization=True
    )
    tokenizer.save_pretrained(root / "hf")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # ONNX tools may write temporary files to the working directory
        main_export(str(root / "hf"), str(root / "onnx"), task="text-generation-with-past")
        quantizer = ORTQuantizer.from_pretrained(root / "onnx")
        quantizer.quantize(
            save_dir=root / "int8", quantization_config=AutoQuantizationConfig.avx512_vnni(is_static=False)
        )
    final = root / "int8"
    for quantized in final.glob("*_quantized.onnx"):
        quantized.rename(final / "model.onnx")
    shutil.copy2(root / "onnx" / "generation_config.json", final)
    return final


@pytest.fixture(scope="module")
def lm_bundle(tiny_lm_dir, tmp_path_factory) -> Path:
    return bundle.package(
        tiny_lm_dir,
        tmp_path_factory.mktemp("lm_bundle") / "edge",
        {"path": str(tiny_lm_dir)},
        {"perplexity": 123.0},
        max_length=64,
    )


@pytest.fixture(scope="module")
def optimum_generate(tiny_lm_dir):
    """generated ids (prompt excluded) of Optimum's greedy generate."""
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    model = ORTModelForCausalLM.from_pretrained(tiny_lm_dir)

    def generate(prompt: str, max_new_tokens: int = NEW_TOKENS, **kwargs) -> list[int]:
        encoded = tokenizer(prompt, return_tensors="pt")
        out = model.generate(**encoded, do_sample=False, max_new_tokens=max_new_tokens, **kwargs)
        return out[0, encoded["input_ids"].shape[1] :].tolist()

    generate.decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)
    return generate


def run_predict(python, lm_bundle: Path, *args, cwd: Path) -> subprocess.CompletedProcess:
    # cwd is a scratch folder: ONNX Runtime may write temporary files beside the process.
    return subprocess.run(
        [str(python), str(lm_bundle / "predict.py"), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_package_detects_a_causal_lm_and_writes_a_generation_bundle(tiny_lm_dir, lm_bundle):
    assert bundle.task_of(tiny_lm_dir) == "causal-lm"
    assert sorted(p.name for p in lm_bundle.iterdir()) == [
        "config.json",
        "generation_config.json",
        "manifest.json",
        "model.onnx",
        "predict.py",
        "tokenizer.json",
    ]
    manifest = json.loads((lm_bundle / "manifest.json").read_text())
    assert manifest["task"] == "causal-lm" and manifest["metrics"] == {"perplexity": 123.0}
    assert set(manifest["files"]) == {
        "config.json",
        "generation_config.json",
        "model.onnx",
        "predict.py",
        "tokenizer.json",
    }
    assert (lm_bundle / "predict.py").read_text() == Path(edge_generate.__file__).read_text()
    assert edge_generate.verify(lm_bundle) == manifest


def test_task_of_tells_a_causal_lm_from_a_classifier(tiny_model_dir, tmp_path):
    assert bundle.task_of(tiny_model_dir) == "classification"
    (tmp_path / "generation_config.json").write_text("{}")
    assert bundle.task_of(tmp_path) == "causal-lm"
    (tmp_path / "labels.json").write_text('["a", "b"]')
    assert bundle.task_of(tmp_path) == "classification"


def test_package_refuses_a_causal_lm_folder_without_an_onnx_model(tiny_lm_dir, tmp_path):
    source = tmp_path / "hf"
    shutil.copytree(tiny_lm_dir.parent / "hf", source)
    with pytest.raises(bundle.BundleSourceError, match="lacks model.onnx"):
        bundle.package(source, tmp_path / "edge", {}, {})
    assert not (tmp_path / "edge").exists()


def test_verify_is_the_same_in_both_bundle_scripts():
    for name in ("sha256", "file_set_problem", "verify"):
        assert inspect.getsource(getattr(edge_generate, name)) == inspect.getsource(getattr(edge_predict, name))


def test_past_shape_comes_from_the_model_else_from_the_config_less_pruned_heads():
    config = {"n_head": 8, "n_embd": 256, "pruned_heads": {"1": [0, 3]}}
    assert past_shape(["batch_size", 4, "past_sequence_length", 8], 0, config) == (4, 8)
    assert past_shape(["batch_size", "heads", "past_sequence_length", "size"], 0, config) == (8, 32)
    assert past_shape(["batch_size", "heads", "past_sequence_length", "size"], 1, config) == (6, 32)


def test_greedy_continuation_equals_optimums_generate(lm_bundle, optimum_generate):
    generator = Generator(lm_bundle)
    for prompt in PROMPTS:
        expected = optimum_generate(prompt)
        assert list(generator.generate(prompt, NEW_TOKENS)) == expected
        assert "".join(generator.stream(prompt, NEW_TOKENS)) == optimum_generate.decode(expected)
        assert generator.continuation(prompt, NEW_TOKENS) == optimum_generate.decode(expected)


def test_generation_stops_at_the_end_token(lm_bundle, optimum_generate):
    generator = Generator(lm_bundle)
    tokens = list(generator.generate(PROMPTS[2], NEW_TOKENS))
    # the first token that did not come before it plays the end token
    stop = next(k for k in range(1, len(tokens)) if tokens[k] not in tokens[:k])
    generator.eos = {tokens[stop]}
    assert list(generator.generate(PROMPTS[2], NEW_TOKENS)) == tokens[:stop]
    # Optimum keeps the end token in its output (the decoded text is the same)
    assert optimum_generate(PROMPTS[2], eos_token_id=tokens[stop]) == tokens[: stop + 1]


def test_a_prompt_beyond_the_models_positions_is_refused(lm_bundle):
    with pytest.raises(ValueError, match="at most 63"):
        Generator(lm_bundle).encode("number " * 100)


def test_predict_py_streams_the_continuation_and_answers_jsonl(lm_bundle, optimum_generate, tmp_path):
    expected = optimum_generate.decode(optimum_generate(PROMPTS[1]))
    one = run_predict(sys.executable, lm_bundle, PROMPTS[1], "--max-new-tokens", NEW_TOKENS, cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    assert one.stdout == expected + "\n"

    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text("\n".join(json.dumps(p if i % 2 else {"prompt": p}) for i, p in enumerate(PROMPTS)) + "\n")
    batch = run_predict(sys.executable, lm_bundle, "--jsonl", jsonl, "--max-new-tokens", NEW_TOKENS, cwd=tmp_path)
    assert batch.returncode == 0, batch.stderr
    rows = [json.loads(line) for line in batch.stdout.splitlines()]
    assert rows == [{"prompt": p, "continuation": optimum_generate.decode(optimum_generate(p))} for p in PROMPTS]


def test_a_changed_file_is_refused_before_loading(lm_bundle, tmp_path):
    copy = shutil.copytree(lm_bundle, tmp_path / "edge")
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps(config | {"n_head": 2}))
    with pytest.raises(BundleError, match="config.json does not match manifest.json"):
        Generator(copy)
    tampered = run_predict(sys.executable, copy, "the film", cwd=tmp_path)
    assert tampered.returncode == 2 and "config.json does not match manifest.json" in tampered.stderr
    assert tampered.stdout == ""
    (copy / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match="tokenizer.json is missing"):
        edge_generate.verify(copy)


def test_predict_py_runs_in_a_fresh_environment(lm_bundle, optimum_generate, edge_python, tmp_path):
    expected = optimum_generate.decode(optimum_generate(PROMPTS[2]))
    one = run_predict(edge_python, lm_bundle, PROMPTS[2], "--max-new-tokens", NEW_TOKENS, "--threads", 1, cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    assert one.stdout == expected + "\n"

    (lm_bundle / "model.onnx").write_bytes((lm_bundle / "model.onnx").read_bytes() + b"\0")
    try:
        tampered = run_predict(edge_python, lm_bundle, PROMPTS[2], cwd=tmp_path)
        assert tampered.returncode == 2 and "model.onnx does not match manifest.json" in tampered.stderr
        assert tampered.stdout == ""
    finally:
        (lm_bundle / "model.onnx").write_bytes((lm_bundle / "model.onnx").read_bytes()[:-1])


def test_a_causal_lm_manifest_listing_no_files_or_another_set_is_refused(lm_bundle, tmp_path):
    copy = shutil.copytree(lm_bundle, tmp_path / "edge")
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps(manifest | {"files": {}}))
    with pytest.raises(BundleError, match="does not list config.json, model.onnx, predict.py, tokenizer.json"):
        edge_generate.verify(copy)
    tampered = run_predict(sys.executable, copy, "the film", cwd=tmp_path)
    assert tampered.returncode == 2 and "does not list" in tampered.stderr and tampered.stdout == ""
    files = manifest["files"] | {"labels.json": manifest["files"]["config.json"]}
    (copy / "manifest.json").write_text(json.dumps(manifest | {"files": files}))
    with pytest.raises(BundleError, match="lists labels.json, which a causal-lm bundle does not hold"):
        edge_generate.verify(copy)


def test_an_unlisted_model_file_beside_a_causal_lm_bundle_is_refused(lm_bundle, tmp_path):
    copy = shutil.copytree(lm_bundle, tmp_path / "edge")
    shutil.copy2(copy / "model.onnx", copy / "decoder_model_merged.onnx")
    with pytest.raises(BundleError, match="decoder_model_merged.onnx is in the bundle folder but not in manifest"):
        Generator(copy)
    (copy / "decoder_model_merged.onnx").unlink()
    (copy / "generation_config.json").unlink()  # optional, but listed in this manifest: it must be there
    with pytest.raises(BundleError, match="generation_config.json is missing"):
        edge_generate.verify(copy)


def test_each_script_refuses_the_other_kind_of_bundle(lm_bundle):
    with pytest.raises(edge_predict.BundleError, match="does not list labels.json"):
        edge_predict.verify(lm_bundle)


def test_expect_manifest_pins_a_causal_lm_bundle(lm_bundle, tmp_path):
    pinned = bundle.manifest_sha256(lm_bundle)
    assert edge_generate.verify(lm_bundle, pinned)
    refused = run_predict(sys.executable, lm_bundle, "the film", "--expect-manifest", "0" * 64, cwd=tmp_path)
    assert refused.returncode == 2 and "not the bundle that was pinned" in refused.stderr and refused.stdout == ""
    done = run_predict(
        sys.executable, lm_bundle, "the film", "--expect-manifest", pinned, "--max-new-tokens", 2, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
