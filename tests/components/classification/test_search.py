import pytest

from components.classification import search
from components.config import SearchConfig


def row(name, acc, ms, mb):
    return {"name": name, "val_accuracy": acc, "test_accuracy": acc, "latency_ms": ms, "size_bytes": int(mb * 1e6)}


def test_candidates_span_the_space_in_build_order_and_respect_the_cap():
    cfg = SearchConfig(
        layers=[[0, 2, 4], [0, 5]], prune_ratios=[0.0, 0.5], trim=[True], quantize=["fused_int8", "fp32"]
    )
    names = [c.name for c in search.candidates(cfg)]
    assert names[:4] == [
        "L0-2-4_p00_trim_fused_int8",
        "L0-2-4_p00_trim_fp32",
        "L0-2-4_p50_trim_fused_int8",
        "L0-2-4_p50_trim_fp32",
    ]
    assert len(names) == 8 and len(set(names)) == 8
    assert len(search.candidates(cfg.model_copy(update={"max_candidates": 3}))) == 3


def test_search_config_rejects_an_empty_or_bad_space():
    with pytest.raises(ValueError, match="increasing"):
        SearchConfig(layers=[[2, 0]])
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        SearchConfig(prune_ratios=[1.0])
    with pytest.raises(ValueError, match="at least one"):
        SearchConfig(quantize=[])


def test_pareto_front_drops_dominated_and_failed_candidates():
    rows = [
        row("fast", 0.85, 1.0, 9),
        row("accurate", 0.90, 3.0, 20),
        row("dominated", 0.84, 2.0, 25),
        row("small", 0.80, 2.5, 5),
        {"name": "broken", "error": "boom"},
    ]
    assert search.pareto_front(rows) == ["fast", "small", "accurate"]


def test_choose_takes_the_fastest_within_tolerance():
    rows = [row("fast_bad", 0.80, 0.5, 5), row("fast_ok", 0.875, 1.0, 9), row("slow_ok", 0.89, 2.0, 8)]
    choice = search.choose(rows, teacher_val_accuracy=0.88, max_drop_points=1.0)
    assert choice == search.Choice(
        "fast_ok", True, "fastest of 2 candidate(s) within 1.0 accuracy points of the teacher"
    )
    assert rows[0]["accuracy_drop_points"] == pytest.approx(8.0)


def test_choose_never_ends_with_nothing():
    rows = [row("a", 0.80, 0.5, 5), row("b", 0.84, 1.0, 9), {"name": "c", "error": "boom"}]
    choice = search.choose(rows, teacher_val_accuracy=0.88, max_drop_points=1.0)
    assert choice.name == "b" and not choice.within_tolerance
    assert "accuracy constraint failed" in choice.reason and "4.00" in choice.reason
    assert search.choose([{"name": "c", "error": "boom"}], 0.88, 1.0).name is None


def test_summary_markdown_and_plot(tmp_path):
    teacher = {"val_accuracy": 0.88, "test_accuracy": 0.87, "latency_ms": 10.0, "size_bytes": 90_000_000}
    rows = [row("a", 0.875, 1.0, 9), row("b", 0.86, 0.8, 8), {"name": "c", "error": "boom"}]
    cfg = SearchConfig()
    choice = search.choose(rows, teacher["val_accuracy"], cfg.max_drop_vs_teacher_points)
    result = search.summary(rows, teacher, choice, cfg, skipped=["d"])
    assert result["chosen"] == "a" and result["front"] == ["b", "a"]
    assert rows[0]["speedup_batch1"] == pytest.approx(10.0) and rows[0]["size_ratio"] == pytest.approx(10.0)
    text = search.render_markdown(result)
    assert "**Chosen:** a" in text and "failed: boom" in text and "Not built" in text
    search.save_plot(rows, result["front"], "a", teacher, tmp_path / "pareto.png")
    assert (tmp_path / "pareto.png").stat().st_size > 1000


def test_a_candidate_without_test_rows_shows_no_test_accuracy():
    """An empty test split gives None (n/a), never an accuracy of 0."""
    teacher = {"val_accuracy": 0.88, "test_accuracy": None, "latency_ms": 10.0, "size_bytes": 90_000_000}
    rows = [row("a", 0.875, 1.0, 9) | {"test_accuracy": None}]
    choice = search.choose(rows, teacher["val_accuracy"], 1.0)
    text = search.render_markdown(search.summary(rows, teacher, choice, SearchConfig(), skipped=[]))
    assert "| a | 0.8750 | n/a |" in text


def test_measure_gives_none_for_an_empty_split(tiny_model_dir, tiny_prepared, tmp_path):
    import shutil

    import pandas as pd

    prepared = tmp_path / "prepared"
    shutil.copytree(tiny_prepared, prepared)
    pd.read_parquet(prepared / "test.parquet").iloc[:0].to_parquet(prepared / "test.parquet", index=False)
    measured = search.measure(tiny_model_dir, "pytorch", prepared, threads=1, calls=3, max_length=32)
    assert measured["test_accuracy"] is None and 0.0 <= measured["val_accuracy"] <= 1.0
