"""The model card builder on small reports of each task's shape: a classifier's, a multitask model's (per-task
figures under models.final.tasks) and a causal LM's (perplexity its quality figure), and an update's."""

import yaml

from components import model_card
from components.model_card import About


def gate(passed: bool, **checks: tuple[float, float, bool]) -> dict:
    return {
        "passed": passed,
        "checks": {
            name: {"value": value, "threshold": threshold, "passed": ok, "note": ""}
            for name, (value, threshold, ok) in checks.items()
        },
    }


def entry(**figures) -> dict:
    return {"runtime": "onnxruntime int8", "size_bytes": 8_000_000, "latency_ms": {"batch1_p50": 2.5}} | figures


CLASSIFICATION = {
    "task": "sequence-classification",
    "dataset": {"source": "vaderSentiment==3.3.2:movie", "sha256": "ab" * 32, "rows": {"train": 8, "test": 2}},
    "models": {
        "teacher": entry(accuracy=0.90, f1_macro=0.89, size_bytes=90_000_000, latency_ms={"batch1_p50": 20.0}),
        "student": entry(accuracy=0.5),  # an intermediate: not in the card's table
        "final": entry(accuracy=0.88, f1_macro=0.87),
        "baseline_teacher_int8": entry(accuracy=0.89, f1_macro=0.88, size_bytes=23_000_000),
    },
    "final_vs_teacher": {"size_ratio": 11.25, "accuracy_drop_points": 2.0, "agreement_with_teacher": 0.95},
    "gate": gate(True, accuracy_drop_points=(2.0, 2.0, True), size_ratio=(11.25, 3.0, True)),
    "environment": {"cpu": "Test CPU", "logical_cpus": 2, "threads": 1},
}
CHAIN = {
    "finetune": {"model": "sentence-transformers/all-MiniLM-L6-v2", "epochs": 3, "max_length": 64},
    "distill": {"layers": [0, 2, 4], "alpha": 0.5, "temperature": 2.0},
    "prune": {"head_ratio": 0.5, "ffn_ratio": 0.5, "steps": 2},
    "trim": {"enabled": True},
    "quantize": {"preset": "auto", "candidates": ["int8", "fused_int8"], "shipped.chosen": "fused_int8"},
}
ABOUT = About(
    name="miniaturize-sentiment",
    version="3",
    data_source="vader-movie",
    data_sha256="ab" * 32,
    quality="accuracy",
    chain=CHAIN,
    labels=["negative", "positive"],
)


def section(card: str, title: str) -> str:
    """The lines of the card's `## title` section."""
    return card.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def test_a_classifiers_card_says_use_data_chain_figures_gate_and_limits():
    card = model_card.markdown(CLASSIFICATION, ABOUT)
    assert card.startswith("# miniaturize-sentiment, version 3\n")
    assert "labels: negative, positive" in section(card, "Intended use")
    data = section(card, "Data")
    assert "`vaderSentiment==3.3.2:movie`" in data and "ab" * 32 in data and "train 8, test 2" in data
    chain = section(card, "Compression chain")
    assert "| distillation | layers=[0, 2, 4], alpha=0.5, temperature=2.0 |" in chain
    assert "| pruning | head_ratio=0.5, ffn_ratio=0.5, steps=2 |" in chain
    assert "| vocabulary trimming | enabled=true |" in chain and "shipped.chosen=fused_int8" in chain
    figures = section(card, "Figures (test split)")
    assert "| model | accuracy | macro F1 | size (MB) | batch-1 p50 (ms) |" in figures  # quality first
    assert "| final (this model) | 0.8800 | 0.8700 | 8.0 | 2.50 |" in figures
    assert "| teacher | 0.9000 | 0.8900 | 90.0 | 20.00 |" in figures
    assert "| teacher quantized alone | 0.8900 |" in figures and "| student" not in figures
    assert "Test CPU" in figures
    assert "## Gate: PASSED" in card and "| accuracy_drop_points | 2.000 | 2.000 | pass |" in card
    limits = section(card, "Known limits")
    assert "cut to 64 tokens" in limits and "95.0% of the test sentences" in limits and "refused" not in limits


def test_a_multitask_card_shows_each_tasks_accuracy():
    def tasks(sentiment, source):
        return {"sentiment": {"accuracy": sentiment, "f1_macro": 0.5}, "source": {"accuracy": source}}

    report = {
        "task": "multitask-classification",
        "tasks": {"sentiment": ["negative", "positive"], "source": ["movie", "tweet"]},
        "dataset": {"source": "vaderSentiment==3.3.2:all", "sha256": "cd" * 32},
        "models": {
            "teacher": entry(accuracy=0.8, tasks=tasks(0.9, 0.7)),
            "final": entry(accuracy=0.75, tasks=tasks(0.85, 0.65)),
            "baseline_teacher_int8": entry(accuracy=None, tasks=tasks(0.88, None)),
        },
        "gate": gate(False, accuracy_drop_vs_single_task_points=(3.0, 1.0, False)),
    }
    about = About("miniaturize-multitask", "1", "vader-all", "cd" * 32, "accuracy", {"trim": {"enabled": True}})
    card = model_card.markdown(report, about)
    use = section(card, "Intended use")
    assert "- sentiment: negative, positive" in use and "- source: movie, tweet" in use
    figures = section(card, "Figures (test split)")
    assert "| sentiment accuracy | 0.9000 | 0.8500 | 0.8800 |" in figures
    assert "| source accuracy | 0.7000 | 0.6500 | n/a |" in figures
    assert "| teacher quantized alone | n/a |" in figures  # a figure not measured is n/a, never 0
    assert "## Gate: FAILED" in card and "| accuracy_drop_vs_single_task_points | 3.000 | 1.000 | FAIL |" in card
    assert "The gate refused it" in section(card, "Known limits")
    front = yaml.safe_load(model_card.hugging_face(report, about).split("---\n")[1])
    metrics = {m["name"]: (m["type"], m["value"]) for m in front["model-index"][0]["results"][0]["metrics"]}
    assert metrics["test accuracy"] == ("accuracy", 0.75)
    assert metrics["test accuracy (sentiment)"] == ("accuracy", 0.85) and metrics["test accuracy (source)"][1] == 0.65


LM_REPORT = {
    "task": "causal-lm",
    "dataset": {"source": "data/corpus.txt", "sha256": "ef" * 32, "rows": {"train": 100}},
    "models": {
        "teacher": {"perplexity": 20.0, "bleu": 30.0, "tokens_per_s": 100.0, "size_bytes": 40_000_000},
        "final": {"perplexity": 24.0, "bleu": 29.5, "tokens_per_s": 450.0, "size_bytes": 5_000_000},
    },
    "gate": gate(True, perplexity_ratio=(1.2, 1.25, True)),
}


def test_a_causal_lm_card_leads_with_perplexity_and_has_no_labels():
    about = About("miniaturize-causal-lm-corpus", None, "corpus", "ef" * 32, "perplexity", {"distill": {"layers": [0]}})
    card = model_card.markdown(LM_REPORT, about)
    assert card.startswith("# miniaturize-causal-lm-corpus\n")
    assert "continuation of a text" in section(card, "Intended use")
    figures = section(card, "Figures (test split)")
    assert "| model | perplexity | BLEU | size (MB) | tokens/s |" in figures
    assert "| final (this model) | 24.00 | 29.50 | 5.0 | 450 |" in figures
    hf = model_card.hugging_face(LM_REPORT, about)
    front = yaml.safe_load(hf.split("---\n")[1])
    assert front["pipeline_tag"] == "text-generation" and hf.split("---\n", 2)[2].lstrip() == card
    result = front["model-index"][0]["results"][0]
    assert front["model-index"][0]["name"] == "miniaturize-causal-lm-corpus"
    assert result["task"] == {"type": "text-generation"}
    assert result["dataset"] == {"name": "data/corpus.txt", "type": "corpus"}
    assert [(m["type"], m["value"]) for m in result["metrics"]] == [("perplexity", 24.0), ("bleu", 29.5)]


def test_a_classifiers_front_matter_names_the_task_dataset_and_metrics():
    front = yaml.safe_load(model_card.hugging_face(CLASSIFICATION, ABOUT).split("---\n")[1])
    assert front["pipeline_tag"] == "text-classification" and "onnx" in front["tags"]
    result = front["model-index"][0]["results"][0]
    assert result["dataset"] == {"name": "vaderSentiment==3.3.2:movie", "type": "vader-movie"}
    assert result["metrics"] == [
        {"type": "accuracy", "value": 0.88, "name": "test accuracy"},
        {"type": "f1", "value": 0.87, "name": "test macro F1"},
    ]


def test_a_report_without_models_or_gate_still_makes_a_card():
    """An update's or a search's report has other sections: the card keeps what it has."""
    update = {
        "task": "sequence-classification",
        "kind": "update",
        "parent_version": "2",
        "batch": "week-50",
        "method": "replay_kd",
        "models": {"final": {"accuracy": 0.8, "size_bytes": 1000}},
    }
    card = model_card.markdown(update, ABOUT)
    assert "incremental update of version 2" in card and "`week-50`" in card
    assert "| final (this model) | 0.8000 | 0.0 |" in card and "## Gate" not in card
    bare = model_card.markdown({}, About("m", None, "data", "", "accuracy"))
    assert bare.startswith("# m\n") and "## Figures" not in bare and "## Compression chain" not in bare
