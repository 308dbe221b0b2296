"""`miniaturize bench`'s arithmetic: the median and range of each model's round p50s, the speed-ups, the table."""

from __future__ import annotations

import pytest

from components.classification import bench
from components.kit import latency


def test_spread_is_the_median_and_range_of_the_round_p50s():
    stats = latency.round_stats([[1.0, 3.0], [5.0], [2.5]])  # round p50s: 2.0, 5.0, 2.5
    assert bench.spread(stats) == {"median": 2.5, "min": 2.0, "max": 5.0, "n": 3}


def test_speedups_and_render():
    row = {"batch1_p50": {"median": 2.0, "min": 1.5, "max": 2.5, "n": 3}}
    teacher = {"batch1_p50": {"median": 12.0, "min": 11.0, "max": 13.0, "n": 3}}
    table = {"teacher": teacher, "final": row}
    assert bench.speedups(table, "teacher") == {"batch1_p50": pytest.approx(6.0)}
    assert bench.speedups(table, "baseline_teacher_int8") == {}
    result = {
        "repeats": 3,
        "models": {name: r | {"batch32_p50": r["batch1_p50"]} for name, r in table.items()},
        "final_speedup_vs_teacher": {"batch1_p50": 6.0, "batch32_p50": 6.0},
        "final_speedup_vs_baseline_teacher_int8": {},
        "environment": {"cpu": "Fake CPU", "logical_cpus": 4, "threads": 2},
    }
    text = bench.render(result)
    assert "| final | 2.00 [1.50-2.50] | 2.00 [1.50-2.50] |" in text
    assert "final vs teacher: batch-1 6.00x" in text
    assert "Measured on Fake CPU (4 logical CPUs), 2 intra-op thread(s) for every model." in text


def test_bench_times_every_model_in_rounds(tiny_model_dir, tiny_prepared, capsys):
    from components.kit.report import ModelSpec

    models = [ModelSpec("teacher", tiny_model_dir, "pytorch"), ModelSpec("final", tiny_model_dir, "pytorch")]
    result = bench.run(models, tiny_prepared, repeats=2, threads=1, warmup=1, calls_b1=2, calls_b32=1, max_length=16)
    assert set(result["models"]) == {"teacher", "final"} and result["environment"]["threads"] == 1
    for row in result["models"].values():
        for key in ("batch1_p50", "batch32_p50"):
            assert row[key]["n"] == 2 and 0 < row[key]["min"] <= row[key]["median"] <= row[key]["max"]
    assert set(result["final_speedup_vs_teacher"]) == {"batch1_p50", "batch32_p50"}
    printed = capsys.readouterr().out
    assert "round 1/2 teacher" in printed and "round 2/2 final" in printed
