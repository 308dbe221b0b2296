import json
import math
import shutil

import numpy as np
import pytest

from components.kit import latency
from components.kit.latency import batched_inputs, latency_stats, onnx_params, pad_batch, runner_logits, time_calls

# ---------------------------------------------------------------- latency_stats (pure)


def test_latency_stats_known_values():
    stats = latency_stats([float(x) for x in range(100, 0, -1)])  # order must not matter
    assert stats == {"p50": pytest.approx(50.5), "p95": pytest.approx(95.05), "mean": pytest.approx(50.5), "n": 100}


def test_latency_stats_single_sample_and_types():
    stats = latency_stats([3.0])
    assert stats == {"p50": 3.0, "p95": 3.0, "mean": 3.0, "n": 1}
    assert all(isinstance(stats[k], float) for k in ("p50", "p95", "mean")) and isinstance(stats["n"], int)


def test_latency_stats_tail_shows_in_p95_not_p50():
    stats = latency_stats([1.0] * 90 + [100.0] * 10)
    assert stats["p50"] == 1.0 and stats["p95"] == 100.0 and stats["mean"] == pytest.approx(10.9)


def test_latency_stats_empty():
    stats = latency_stats([])
    assert stats["n"] == 0 and all(math.isnan(stats[k]) for k in ("p50", "p95", "mean"))


# ---------------------------------------------------------------- time_calls


def test_time_calls_warms_up_then_times_cycling_through_inputs():
    seen = []
    samples = time_calls(seen.append, ["a", "b"], warmup=3, calls=5)
    assert seen == ["a", "b", "a", "b", "a", "b", "a", "b"]
    assert len(samples) == 5 and all(isinstance(s, float) and s >= 0 for s in samples)


def test_time_calls_measures_milliseconds():
    import time

    samples = time_calls(lambda _: time.sleep(0.005), [None], warmup=0, calls=2)
    assert all(4.0 <= s < 1000.0 for s in samples)


def test_time_calls_needs_inputs():
    with pytest.raises(ValueError):
        time_calls(lambda _: None, [], warmup=1, calls=1)


# ---------------------------------------------------------------- alternating rounds (pure, with fakes)


@pytest.mark.parametrize(
    "total, rounds, shares",
    [(200, 5, [40] * 5), (21, 2, [11, 10]), (7, 3, [3, 2, 2]), (1, 1, [1]), (5, 5, [1] * 5), (3, 5, [1, 1, 1])],
)
def test_calls_per_round_keeps_the_total_with_at_least_one_call_a_round(total, rounds, shares):
    split = latency.calls_per_round(total, rounds)
    assert split == shares
    assert sum(split) == total and min(split) >= 1 and len(split) == min(rounds, total)
    assert max(split) - min(split) <= 1  # as even as the numbers allow


@pytest.mark.parametrize("total, rounds", [(0, 5), (10, 0), (-1, 2)])
def test_calls_per_round_needs_a_call_and_a_round(total, rounds):
    with pytest.raises(ValueError, match="at least one call and one round"):
        latency.calls_per_round(total, rounds)


def test_round_order_rotates_so_each_model_goes_first_in_turn():
    names = ["teacher", "final", "baseline"]
    orders = [latency.round_order(names, r) for r in range(4)]
    assert orders == [
        ["teacher", "final", "baseline"],
        ["final", "baseline", "teacher"],
        ["baseline", "teacher", "final"],
        ["teacher", "final", "baseline"],
    ]
    assert [o[0] for o in orders[:3]] == names  # over len(names) rounds, every model leads once
    assert names == ["teacher", "final", "baseline"]  # the caller's list is left alone
    assert latency.round_order([], 3) == []


def test_time_rounds_warms_up_once_then_alternates_in_rotated_rounds():
    calls = []  # (model, input) in the order the calls were made

    def fake(name):
        return lambda x: calls.append((name, x))

    fns = {"a": fake("a"), "b": fake("b"), "c": fake("c")}
    inputs = {"a": [0, 1, 2], "b": [10, 11], "c": [20]}
    seen_rounds = []
    samples = latency.time_rounds(
        fns, inputs, warmup=2, total_calls=5, rounds=2, after_each=lambda n, r, s: seen_rounds.append((n, r, len(s)))
    )
    # warm-up: each model twice, all before the first round, nothing timed
    assert calls[:6] == [("a", 0), ("a", 1), ("b", 10), ("b", 11), ("c", 20), ("c", 20)]
    # round 0 in list order with 3 calls each, round 1 rotated (b, c, a) with 2 calls each
    assert [n for n, _ in calls[6:]] == ["a"] * 3 + ["b"] * 3 + ["c"] * 3 + ["b"] * 2 + ["c"] * 2 + ["a"] * 2
    assert seen_rounds == [("a", 0, 3), ("b", 0, 3), ("c", 0, 3), ("b", 1, 2), ("c", 1, 2), ("a", 1, 2)]
    # a model's calls cycle through its inputs across warm-up and rounds, as one long time_calls run would
    assert [x for n, x in calls if n == "a"] == [0, 1, 2, 0, 1, 2, 0]
    assert [x for n, x in calls if n == "b"] == [10, 11, 10, 11, 10, 11, 10]
    assert {name: [len(r) for r in rounds] for name, rounds in samples.items()} == {
        "a": [3, 2],
        "b": [3, 2],
        "c": [3, 2],
    }
    assert all(isinstance(ms, float) and ms >= 0 for rounds in samples.values() for r in rounds for ms in r)


def test_time_rounds_needs_inputs_for_every_model():
    with pytest.raises(ValueError):
        latency.time_rounds({"a": lambda _: None}, {"a": []}, warmup=0, total_calls=2, rounds=1)


def test_round_stats_median_of_round_percentiles_and_spread():
    rounds = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [2.0, 2.5, 3.0], [100.0, 100.0, 100.0], [1.5, 2.5, 3.5]]
    stats = latency.round_stats(rounds)
    assert stats["round_p50"] == [2.0, 5.0, 2.5, 100.0, 2.5]
    assert stats["p50"] == 2.5  # the median of the round p50s: one disturbed round (100 ms) barely moves it
    assert stats["round_p95"] == pytest.approx([2.9, 5.9, 2.95, 100.0, 3.4])
    assert stats["p95"] == pytest.approx(3.4)
    assert stats["p50_spread"] == 98.0  # largest round p50 minus the smallest: the disturbed round shows here
    assert stats["n"] == 15
    pooled = latency_stats([ms for r in rounds for ms in r])["p50"]
    assert pooled == 3.0 and stats["p50"] != pooled  # not the percentile of all calls pooled


def test_round_stats_even_rounds_one_round_and_none():
    assert latency.round_stats([[1.0], [3.0]])["p50"] == 2.0  # an even count: the mean of the middle two
    one = latency.round_stats([[2.0, 4.0]])
    assert one["p50"] == 3.0 and one["p50_spread"] == 0.0 and one["round_p50"] == [3.0]
    none = latency.round_stats([])
    assert none["n"] == 0 and math.isnan(none["p50"]) and math.isnan(none["p50_spread"])


def test_latency_figures_keep_the_gates_keys_as_medians_and_add_spreads_and_rounds():
    b1 = latency.round_stats([[1.0, 1.0], [3.0, 3.0], [2.0, 2.0]])
    b32 = latency.round_stats([[10.0], [12.0], [11.0]])
    latency_ms, rounds_ms = latency.latency_figures(b1, b32)
    assert latency_ms == {
        "batch1_p50": 2.0,
        "batch1_p95": 2.0,
        "batch32_p50": 11.0,
        "batch32_p95": 11.0,
        "batch1_p50_spread": 2.0,
        "batch32_p50_spread": 2.0,
    }
    assert rounds_ms == {
        "batch1_p50": [1.0, 3.0, 2.0],
        "batch1_p95": [1.0, 3.0, 2.0],
        "batch32_p50": [10.0, 12.0, 11.0],
        "batch32_p95": [10.0, 12.0, 11.0],
    }


# ---------------------------------------------------------------- batches


def test_pad_batch():
    batch = pad_batch([[101, 7, 102], [101, 102]], pad_id=0)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(v.dtype == np.int64 and v.shape == (2, 3) for v in batch.values())
    assert batch["input_ids"].tolist() == [[101, 7, 102], [101, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert not batch["token_type_ids"].any()


def test_batched_inputs_single_sentences_are_unpadded():
    ids = [[1, 2, 3], [1, 2], [1, 2, 3, 4]]
    batches = batched_inputs(ids, pad_id=0, batch_size=1)
    assert [b["input_ids"].tolist() for b in batches] == [[row] for row in ids]
    assert all(b["attention_mask"].all() for b in batches)


def test_batched_inputs_groups_consecutive_sentences_and_drops_partial_tail():
    ids = [[1] * (1 + i % 5) for i in range(70)]
    batches = batched_inputs(ids, pad_id=0, batch_size=32)
    assert [b["input_ids"].shape for b in batches] == [(32, 5), (32, 5)]
    assert batches[1]["attention_mask"].sum() == sum(len(r) for r in ids[32:64])


def test_batched_inputs_small_split_gives_one_batch():
    batches = batched_inputs([[1, 2], [1]], pad_id=0, batch_size=32)
    assert len(batches) == 1 and batches[0]["input_ids"].shape == (2, 2)
    with pytest.raises(ValueError):
        batched_inputs([], pad_id=0, batch_size=32)


def test_runner_logits_keeps_input_order():
    ids = [[5] * n for n in (4, 1, 3, 2, 6)]

    def fake(batch):  # logit 0 = sentence length, logit 1 = batch width
        lengths = batch["attention_mask"].sum(1)
        return np.stack([lengths, np.full_like(lengths, batch["input_ids"].shape[1])], 1)

    logits = runner_logits(fake, ids, pad_id=0, batch_size=2)
    assert logits.dtype == np.float32 and logits[:, 0].tolist() == [4, 1, 3, 2, 6]
    assert logits[:, 1].tolist() == [4, 2, 4, 2, 6]  # length-sorted batches: {1,2}, {3,4}, {6}


def test_runtime_kind():
    assert latency.runtime_kind("pytorch") == latency.runtime_kind("torch") == "torch"
    assert latency.runtime_kind("onnxruntime") == latency.runtime_kind("onnx") == "onnx"
    with pytest.raises(ValueError, match="unknown runtime"):
        latency.runtime_kind("tensorflow")


# ---------------------------------------------------------------- real models


@pytest.fixture(scope="module")
def trained_like_models(tiny_model_dir, tmp_path_factory):
    """The tiny model with every weight perturbed (no identical tensors for the exporter to merge),
    as a PyTorch folder, its ONNX fp32 export and a dynamic int8 quantization of that export."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from optimum.exporters.onnx import main_export
    from transformers import AutoModelForSequenceClassification

    root = tmp_path_factory.mktemp("bench_models")
    torch_dir, onnx_dir, int8_dir = root / "torch", root / "onnx", root / "int8"
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    shutil.copytree(tiny_model_dir, torch_dir)
    model.save_pretrained(torch_dir, safe_serialization=True)
    main_export(str(torch_dir), str(onnx_dir), task="text-classification", do_validation=False)
    shutil.copytree(onnx_dir, int8_dir, ignore=shutil.ignore_patterns("*.onnx"))
    quantize_dynamic(str(onnx_dir / "model.onnx"), str(int8_dir / "model.onnx"), weight_type=QuantType.QInt8)
    for folder in (onnx_dir, int8_dir):
        shutil.copy2(tiny_model_dir / "labels.json", folder / "labels.json")
    return {
        "torch": torch_dir,
        "onnx": onnx_dir,
        "int8": int8_dir,
        "params": sum(p.numel() for p in model.parameters()),
    }


def test_onnx_params_match_pytorch_and_count_int8_weights_once(trained_like_models):
    fp32 = onnx_params(trained_like_models["onnx"])
    assert fp32 == trained_like_models["params"]
    assert onnx_params(trained_like_models["int8"]) == fp32
    assert onnx_params(trained_like_models["onnx"] / "model.onnx") == fp32


def test_onnx_precision_and_size(trained_like_models):
    assert latency.onnx_precision(trained_like_models["onnx"]) == "fp32"
    assert latency.onnx_precision(trained_like_models["int8"]) == "int8"
    fp32_file = trained_like_models["onnx"] / "model.onnx"
    assert latency.onnx_size_bytes(trained_like_models["onnx"]) == fp32_file.stat().st_size
    assert latency.onnx_size_bytes(trained_like_models["int8"]) < fp32_file.stat().st_size / 2


def test_find_onnx_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="none"):
        latency.find_onnx_file(tmp_path)
    (tmp_path / "a.onnx").write_bytes(b"")
    assert latency.find_onnx_file(tmp_path) == tmp_path / "a.onnx"
    (tmp_path / "b.onnx").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="exactly one"):
        latency.find_onnx_file(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"")
    assert latency.find_onnx_file(tmp_path) == tmp_path / "model.onnx"


def test_torch_and_onnx_runners_agree_on_real_batches(trained_like_models, tiny_prepared):
    import pandas as pd
    from transformers import AutoTokenizer

    texts = pd.read_parquet(tiny_prepared / "test.parquet")["text"].tolist()
    tokenizer = AutoTokenizer.from_pretrained(trained_like_models["torch"])
    ids = tokenizer(texts, truncation=True, max_length=32)["input_ids"]
    torch_run = latency.load_runner(trained_like_models["torch"], "pytorch", threads=1)
    onnx_run = latency.load_runner(trained_like_models["onnx"], "onnxruntime", threads=1)
    for batch in batched_inputs(ids, tokenizer.pad_token_id, 1)[:3] + batched_inputs(ids, tokenizer.pad_token_id, 32):
        expected = torch_run(batch)
        assert expected.shape == (len(batch["input_ids"]), 2)
        np.testing.assert_allclose(onnx_run(batch), expected, atol=1e-4)
    np.testing.assert_allclose(
        runner_logits(onnx_run, ids, tokenizer.pad_token_id),
        runner_logits(torch_run, ids, tokenizer.pad_token_id),
        atol=1e-4,
    )
    samples = time_calls(onnx_run, batched_inputs(ids, tokenizer.pad_token_id, 1), warmup=1, calls=3)
    assert len(samples) == 3


def test_peak_rss_of_onnx_model_in_a_fresh_process(trained_like_models, tiny_prepared):
    rss = latency.peak_rss_mb(trained_like_models["int8"], "onnxruntime", tiny_prepared, n_sentences=4, threads=1)
    # A fresh interpreter with onnxruntime and a ~1 MB model; torch (hundreds of MB) must not be loaded.
    assert 10.0 < rss < 250.0


def test_rss_probe_cli_reports_json(trained_like_models, tiny_prepared):
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "components.kit.rss_probe",
            "--model",
            str(trained_like_models["onnx"]),
            "--runtime",
            "onnx",
            "--prepared",
            str(tiny_prepared),
            "--n",
            "100",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=latency.PROJECT_ROOT,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["n"] == 16 and result["runtime"] == "onnx" and result["peak_rss_mb"] > 0


def test_peak_rss_reports_probe_failure(tmp_path, tiny_prepared):
    with pytest.raises(RuntimeError, match="rss probe failed"):
        latency.peak_rss_mb(tmp_path, "onnx", tiny_prepared, n_sentences=2, threads=1)


def test_probe_reads_peak_rss_from_proc_status(tmp_path):
    from components.kit import rss_probe

    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmPeak:\t 900000 kB\nVmHWM:\t   81920 kB\nVmRSS:\t   40960 kB\n")
    assert rss_probe.peak_rss_mb(status) == 80.0
    assert rss_probe.peak_rss_mb(tmp_path / "missing") > 0  # falls back to ru_maxrss


def test_logit_outputs_and_the_onnx_runner_of_a_multitask_export():
    from types import SimpleNamespace

    assert latency.logit_outputs(["logits", "logits_a"]) == ["logits"]
    assert latency.logit_outputs(["logits_a", "hidden", "logits_b"]) == ["logits_a", "logits_b"]
    assert latency.logit_outputs(["scores", "hidden"]) == ["scores"]

    class Session:
        def get_inputs(self):
            return [SimpleNamespace(name="input_ids")]

        def get_outputs(self):
            return [SimpleNamespace(name=n) for n in ("logits_a", "hidden", "logits_b")]

        def run(self, names, feed):
            ids = feed["input_ids"].astype(np.float32)
            return [{"logits_a": ids[:, :2], "logits_b": ids[:, 2:3] * 10, "hidden": ids}[n] for n in names]

    batch = pad_batch([[1, 2, 3], [4, 5, 6]], pad_id=0)
    np.testing.assert_array_equal(latency.onnx_runner(Session())(batch), [[1, 2, 30], [4, 5, 60]])
