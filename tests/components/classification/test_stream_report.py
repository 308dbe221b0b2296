"""The incremental demonstration's summary, table and plot, on hand-made results."""

from __future__ import annotations

import pytest

from components.classification import stream_report


def entry(accuracy: dict, seconds: float, examples: float, size_bytes: float | None = None) -> dict:
    return {"accuracy": accuracy, "seconds": seconds, "examples": examples, "size_bytes": size_bytes}


@pytest.fixture
def results() -> dict:
    head = entry({"movie": 0.90}, 600, 50_000)
    return {
        "stream": ["vader-movie", "vader-amazon", "vader-tweets"],
        "models": {},
        "scratch_seeds": [13, 14],
        "steps": [
            {"step": 0, "learned": "movie", "incremental": head, "naive": head, "scratch": head},
            {
                "step": 1,
                "learned": "amazon",
                "incremental": entry({"movie": 0.895, "amazon": 0.86}, 100, 9_000),
                "naive": entry({"movie": 0.80, "amazon": 0.88}, 60, 6_000),
                "scratch": entry({"movie": 0.90, "amazon": 0.87}, 800, 70_000),
            },
            {
                "step": 2,
                "learned": "tweets",
                "incremental": entry({"movie": 0.89, "amazon": 0.865, "tweets": 0.84}, 120, 10_000, 8_000_000)
                | {"alias": "champion"},
                "naive": entry({"movie": 0.70, "amazon": 0.75, "tweets": 0.86}, 60, 6_000)
                | {"alias": "challenger", "gate_reason": "forgetting 13.00 points on amazon (max 1.00)"},
                "scratch": entry({"movie": 0.90, "amazon": 0.87, "tweets": 0.85}, 1000, 90_000, 12_440_000),
            },
        ],
    }


def test_summary_answers_the_demonstrations_questions(results):
    summary = stream_report.summarise(results)
    assert summary["final_mean"]["incremental"] == pytest.approx((0.89 + 0.865 + 0.84) / 3)
    assert summary["final_vs_scratch_points"] == pytest.approx(100 * ((0.89 + 0.865 + 0.84) - (0.9 + 0.87 + 0.85)) / 3)
    assert summary["first_batch"] == "movie" and summary["first_batch_first_champion"] == 0.90
    assert summary["first_batch_change_points"] == pytest.approx(-1.0)
    first, second = summary["updates"]
    assert first["incremental_forgetting_points"] == pytest.approx(0.5)
    assert first["naive_forgetting_points"] == pytest.approx(10.0)
    assert second["naive_forgetting_points"] == pytest.approx(13.0)  # amazon 0.88 -> 0.75
    assert first["seconds_ratio"] == pytest.approx(100 / 800) and second["examples_ratio"] == pytest.approx(1 / 9)
    assert summary["max_seconds_ratio"] == pytest.approx(0.125)
    assert summary["final_size_bytes"] == {"incremental": 8_000_000, "naive": None, "scratch": 12_440_000}


def test_table_has_a_row_per_method_and_step_and_the_plot_is_written(results, tmp_path):
    summary = stream_report.summarise(results)
    text = stream_report.render_markdown(results, summary)
    assert "| after | method | movie | amazon | tweets | mean |" in text
    assert "| movie | first full run | 90.00 | - | - | 90.00 |" in text
    assert "| tweets | naive fine-tuning | 70.00 | 75.00 | 86.00 |" in text
    # each update's gate outcome (its registry alias); none for the first run and the from-scratch runs
    # each final model's size in MB, where the results hold it
    assert "| 13.00 | refused | - | 60 | 6,000 |" in text and "| 0.50 | passed | 8.0 | 120 | 10,000 |" in text
    assert "| 90.00 | - | - | - | 600 | 50,000 |" in text and "| 87.33 | - | - | 12.4 | 1000 | 90,000 |" in text
    assert "- final model size: incremental 8.0 MB, from scratch 12.4 MB (1.55x the incremental model's)" in text
    # a from-scratch run that reused training stages: its seconds are flagged
    results["steps"][1]["scratch"]["reused"] = ["finetune"]
    assert "| 800 (reused) | 70,000 |" in stream_report.render_markdown(results, stream_report.summarise(results))
    assert "mean of seeds 13, 14)." in text and "update 2 (tweets): cost 0.12x the wall time" in text
    # a refusal's reason, where the demonstration kept it
    assert text.count("refused (") == 1 and "naive refused (forgetting 13.00 points on amazon (max 1.00))" in text
    stream_report.save_plot(results, tmp_path / "stream.png")
    assert (tmp_path / "stream.png").stat().st_size > 5000


def test_forgetting_counts_only_batches_measured_twice():
    assert stream_report.forgetting({"a": 0.9, "b": None}, {"a": 0.95, "b": 0.5, "c": 0.1}) == 0.0
    assert stream_report.forgetting({"a": 0.9}, {"a": 0.85}) == pytest.approx(5.0)


def test_without_intermediate_scratch_runs_updates_are_costed_against_the_first_run(results, tmp_path):
    """`--scratch-steps last`: no from-scratch run after update 1; its cost is set against the first full run."""
    results["steps"][1]["scratch"] = None
    summary = stream_report.summarise(results)
    first, second = summary["updates"]
    assert first["cost_reference"] == "first_run" and second["cost_reference"] == "scratch"
    assert first["seconds_ratio"] == pytest.approx(100 / 600) and first["examples_ratio"] == pytest.approx(9 / 50)
    assert "scratch_mean" not in first and summary["final_mean"]["scratch"] == pytest.approx((0.9 + 0.87 + 0.85) / 3)
    text = stream_report.render_markdown(results, summary)
    assert "| amazon | from scratch |" not in text and "| tweets | from scratch |" in text
    assert "of the first full run (from scratch on less data: an upper bound)" in text
    # from-scratch runs with their own overrides (--scratch-set) say so
    results["scratch_settings"] = ["prune.accuracy_budget_points=null"]
    text = stream_report.render_markdown(results, summary)
    assert "(the last one: mean of seeds 13, 14), with `prune.accuracy_budget_points=null`." in text
    # results recorded before sizes were kept: no size line
    results["steps"][2]["scratch"].pop("size_bytes")
    assert "final model size" not in stream_report.render_markdown(results, stream_report.summarise(results))
    stream_report.save_plot(results, tmp_path / "stream.png")
    assert (tmp_path / "stream.png").stat().st_size > 5000


def test_the_first_batch_line_gives_the_sentences_behind_its_change(results):
    text = stream_report.render_markdown(results, stream_report.summarise(results))
    # results recorded before the first batch was compared sentence by sentence: the figures alone
    assert (
        "- first batch (movie): first champion 90.00, after the last update 89.00 incremental (-1.00 points), "
        "70.00 naive\n" in text
    )
    results["first_batch_paired"] = {
        "incremental": {"n": 1006, "lost": 50, "gained": 33, "p_value": 0.0785},
        "naive": {"n": 1006, "lost": 240, "gained": 40, "p_value": 1e-30},
    }
    summary = stream_report.summarise(results)
    assert summary["first_batch_paired"]["incremental"]["lost"] == 50
    assert (
        "- first batch (movie): first champion 90.00, after the last update 89.00 incremental (-1.00 points; "
        "on its 1,006 test sentences: 50 right to wrong, 33 wrong to right; McNemar p=0.08), 70.00 naive "
        "(on its 1,006 test sentences: 240 right to wrong, 40 wrong to right; McNemar p<0.001)\n"
    ) in stream_report.render_markdown(results, summary)
