import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from components.causal_lm import HISTORY_FILE, SEEDS_FILE, data, train
from components.config import LMArchitecture, LMDataConfig, LMDistillConfig, LMPruneConfig, LMTeacherConfig
from components.kit.modeling import count_params
from components.kit.pruning import neurons_to_keep
from components.kit.tracking import NullTracker
from tests.components.causal_lm.test_data import sentences

MAX_LENGTH = 32


@pytest.fixture(scope="module")
def lm_prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_prepared")
    (root / "corpus.txt").write_text("\n".join(sentences(200)))
    cfg = LMDataConfig(source=str(root / "corpus.txt"), vocab_size=400, split=(0.8, 0.1, 0.1))
    data.run(cfg, root / "prepared", NullTracker(), seed=0, root=root)
    return root / "prepared"


@pytest.fixture(scope="module")
def lm_teacher(tmp_path_factory, lm_prepared):
    """A 2-block, 32-wide, 4-head GPT-2 after 2 epochs from scratch."""
    out = tmp_path_factory.mktemp("lm_teacher")
    cfg = LMTeacherConfig(
        architecture=LMArchitecture(n_layer=2, n_embd=32, n_head=4, n_positions=64),
        epochs=2,
        batch_size=16,
        lr=3e-3,
        max_length=MAX_LENGTH,
    )
    result = train.train_teacher(cfg, lm_prepared, out, NullTracker(), seed=0)
    return out, result


def test_lm_kd_loss_is_cross_entropy_without_teacher_and_zero_kl_against_itself():
    logits, targets = torch.randn(5, 11), torch.randint(0, 11, (5,))
    ce = torch.nn.functional.cross_entropy(logits, targets)
    assert torch.allclose(train.lm_kd_loss(logits, None, targets, 0.5, 2.0), ce)
    assert torch.allclose(train.lm_kd_loss(logits, logits, targets, 0.5, 2.0), 0.5 * ce, atol=1e-6)
    assert train.lm_kd_loss(logits, torch.randn(5, 11), targets, 1.0, 2.0) > 0


def test_encode_appends_eos_and_truncates(lm_prepared):
    tokenizer = train.load_tokenizer(lm_prepared / "tokenizer")
    rows = train.encode(tokenizer, ["the film was quite good on day 7", "x" * 200], max_length=8)
    assert all(row[-1] == tokenizer.eos_token_id for row in rows)
    assert len(rows[1]) == 8


def test_teacher_trains_and_saves_the_agreed_format(lm_teacher, lm_prepared):
    out, result = lm_teacher
    assert result.metrics["val_perplexity"] < 0.5 * result.metrics["untrained_val_perplexity"]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "GPT2LMHeadModel" and (out / "model.safetensors").exists()
    assert result.metrics["params"] == count_params(model)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.padding_side == "left" and tokenizer.model_input_names == ["input_ids", "attention_mask"]
    assert model.config.pad_token_id == model.config.eos_token_id == tokenizer.eos_token_id
    val = train.read_texts(lm_prepared, "validation")
    assert train.perplexity(model, tokenizer, val, MAX_LENGTH, 8) == pytest.approx(
        result.metrics["val_perplexity"], rel=1e-4
    )


def test_perplexity_does_not_depend_on_batching(lm_teacher, lm_prepared):
    out, _ = lm_teacher
    model, tokenizer = AutoModelForCausalLM.from_pretrained(out), train.load_tokenizer(out)
    val = train.read_texts(lm_prepared, "validation")
    assert train.perplexity(model, tokenizer, val, MAX_LENGTH, 3) == pytest.approx(
        train.perplexity(model, tokenizer, val, MAX_LENGTH, 7), rel=1e-4
    )


def test_keep_blocks_copies_the_chosen_blocks(lm_teacher):
    out, _ = lm_teacher
    teacher = AutoModelForCausalLM.from_pretrained(out)
    student = train.keep_blocks(AutoModelForCausalLM.from_pretrained(out), [1])
    assert student.config.n_layer == 1 and len(student.transformer.h) == 1
    assert all(
        torch.equal(a, b)
        for a, b in zip(student.transformer.h[0].state_dict().values(), teacher.transformer.h[1].state_dict().values())
    )
    assert torch.equal(student.transformer.wte.weight, teacher.transformer.wte.weight)
    assert student.lm_head.weight is student.transformer.wte.weight
    with pytest.raises(ValueError, match="0..1"):
        train.keep_blocks(AutoModelForCausalLM.from_pretrained(out), [0, 2])


@pytest.fixture(scope="module")
def lm_student(tmp_path_factory, lm_teacher, lm_prepared):
    out = tmp_path_factory.mktemp("lm_student")
    cfg = LMDistillConfig(layers=[1], epochs=1, batch_size=16, lr=3e-3, ablation=True)
    result = train.distill(
        cfg, lm_teacher[0], lm_prepared, out / "student", out / "ablation", NullTracker(), seed=0, max_length=MAX_LENGTH
    )
    return out / "student", result


def test_distill_trains_the_student_and_the_ablation(lm_student):
    out, result = lm_student
    student = AutoModelForCausalLM.from_pretrained(out)
    ablation = AutoModelForCausalLM.from_pretrained(out.parent / "ablation")
    assert student.config.n_layer == ablation.config.n_layer == 1
    assert result.metrics["params"] == count_params(student)
    assert result.metrics["val_perplexity"] > 1 and result.metrics["ablation_val_perplexity"] > 1
    assert not torch.equal(student.transformer.h[0].attn.c_attn.weight, ablation.transformer.h[0].attn.c_attn.weight)


def test_prune_removes_heads_physically_and_reloads(lm_teacher, lm_student, lm_prepared, tmp_path):
    teacher_dir, _ = lm_teacher
    cfg = LMPruneConfig(head_ratio=0.5, ffn_ratio=0.0, epochs=1, importance_batches=2)
    distill_cfg = LMDistillConfig(layers=[1], batch_size=16, lr=1e-3)
    # A 2-block student: 8 heads, 4 removed, never the last head of a block.
    student_dir = tmp_path / "two_block_student"
    train.save(AutoModelForCausalLM.from_pretrained(teacher_dir), train.load_tokenizer(teacher_dir), student_dir)
    result = train.prune(
        cfg,
        student_dir,
        teacher_dir,
        lm_prepared,
        tmp_path / "pruned",
        NullTracker(),
        seed=0,
        max_length=MAX_LENGTH,
        distill_cfg=distill_cfg,
    )
    assert (result.metrics["heads_before"], result.metrics["heads_after"]) == (8, 4)
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    assert sum(train.head_counts(pruned)) == 4 and min(train.head_counts(pruned)) >= 1
    assert count_params(pruned) == result.metrics["params"] < result.metrics["params_before"]
    assert sum(len(v) for v in pruned.config.pruned_heads.values()) == 4

    # The saved folder reloads to the same function: every weight loaded (nothing freshly initialised), and
    # the same logits as the unpruned student pruned by the same plan and given the saved weights.
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    rebuilt = AutoModelForCausalLM.from_pretrained(student_dir)
    rebuilt.prune_heads(result.info["pruned_heads"])
    rebuilt.load_state_dict(load_file(tmp_path / "pruned" / "model.safetensors"), strict=False)
    tokenizer = train.load_tokenizer(tmp_path / "pruned")
    batch = tokenizer(["the film was quite good", "our team"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.allclose(reloaded.eval()(**batch).logits, rebuilt.eval()(**batch).logits, atol=1e-6)
    assert result.metrics["val_perplexity"] <= result.metrics["val_perplexity_before_recovery"] * 1.05


def test_prune_keeps_a_head_in_every_layer(lm_student, lm_teacher, lm_prepared, tmp_path):
    cfg = LMPruneConfig(head_ratio=0.9, ffn_ratio=0.0, epochs=0, importance_batches=1)
    result = train.prune(
        cfg,
        lm_student[0],
        lm_teacher[0],
        lm_prepared,
        tmp_path / "pruned",
        NullTracker(),
        seed=0,
        max_length=MAX_LENGTH,
        distill_cfg=LMDistillConfig(layers=[1], batch_size=16),
    )
    assert (result.metrics["heads_before"], result.metrics["heads_after"]) == (4, 1)
    assert result.metrics["val_perplexity"] == result.metrics["val_perplexity_before_recovery"]


def test_prune_can_remove_mlp_neurons_in_every_block(lm_student, lm_teacher, lm_prepared, tmp_path):
    cfg = LMPruneConfig(head_ratio=0.0, ffn_ratio=0.5, epochs=0, importance_batches=1)
    result = train.prune(
        cfg,
        lm_student[0],
        lm_teacher[0],
        lm_prepared,
        tmp_path / "pruned",
        NullTracker(),
        seed=0,
        max_length=MAX_LENGTH,
        distill_cfg=LMDistillConfig(layers=[1], batch_size=16),
    )
    assert result.metrics["heads_after"] == result.metrics["heads_before"] == 4
    pruned, info = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned", output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    assert pruned.config.n_inner == 64 and pruned.transformer.h[0].mlp.c_fc.weight.shape == (32, 64)
    assert result.metrics["params"] == count_params(pruned) < result.metrics["params_before"]
    tokenizer = train.load_tokenizer(tmp_path / "pruned")
    val = train.read_texts(lm_prepared, "validation")
    assert train.perplexity(pruned, tokenizer, val, MAX_LENGTH, 8) == pytest.approx(
        result.metrics["val_perplexity"], rel=1e-4
    )


def test_importance_ranks_every_head_and_neuron(lm_teacher, lm_prepared):
    model = AutoModelForCausalLM.from_pretrained(lm_teacher[0])
    tokenizer = train.load_tokenizer(lm_teacher[0])
    teaching = train.Teaching(AutoModelForCausalLM.from_pretrained(lm_teacher[0]), 0.5, 2.0)
    heads, neurons = train.importance(
        model,
        tokenizer,
        train.read_texts(lm_prepared, "train"),
        MAX_LENGTH,
        n_batches=1,
        batch_size=8,
        teaching=teaching,
        seed=0,
    )
    assert [h.shape for h in heads] == [(4,), (4,)] and [n.shape for n in neurons] == [(128,), (128,)]
    assert all((h > 0).all() for h in heads)
    assert [len(k) for k in neurons_to_keep(neurons, 0.25)] == [96, 96]


def test_teacher_writes_its_validation_curve(lm_teacher):
    out, result = lm_teacher
    curve = json.loads((out / HISTORY_FILE).read_text())
    assert [round(e["val_perplexity"], 6) for e in curve["epochs"]] == [
        round(e["val_perplexity"], 6) for e in result.info["history"]
    ]
    assert len(curve["epochs"]) == result.metrics["epochs_run"] == 2 and curve["patience"] is None
    assert curve["epochs"][curve["best_epoch"] - 1]["val_perplexity"] == pytest.approx(result.metrics["val_perplexity"])
    assert curve["untrained_val_perplexity"] == pytest.approx(result.metrics["untrained_val_perplexity"])


def test_fit_stops_once_validation_perplexity_stops_improving(lm_teacher, lm_prepared, monkeypatch):
    scripted = iter([50.0, 40.0, 45.0, 30.0, 20.0])  # the third epoch is worse: patience 1 stops there
    monkeypatch.setattr(train.Corpus, "val_perplexity", lambda self, model, batch_size: next(scripted))
    tokenizer = train.load_tokenizer(lm_teacher[0])
    model = AutoModelForCausalLM.from_pretrained(lm_teacher[0])
    corpus = train.Corpus.read(tokenizer, lm_prepared, MAX_LENGTH)
    outcome = train.fit(model, corpus, train.Budget(5, 16, 1e-3), tracker=NullTracker(), seed=0, patience=1)
    assert len(outcome.history) == 3 and outcome.best_epoch == 2 and outcome.best_val_perplexity == 40.0
    scripted = iter([50.0, 40.0, 45.0, 30.0, 20.0])
    outcome = train.fit(model, corpus, train.Budget(5, 16, 1e-3), tracker=NullTracker(), seed=0)
    assert len(outcome.history) == 5 and outcome.best_epoch == 5


def test_distill_compares_with_the_ablation_over_extra_seeds(lm_teacher, lm_prepared, lm_student, tmp_path):
    cfg = LMDistillConfig(layers=[1], epochs=1, batch_size=16, lr=3e-3, ablation=True)
    result = train.distill(
        cfg,
        lm_teacher[0],
        lm_prepared,
        tmp_path / "student",
        tmp_path / "ablation",
        NullTracker(),
        seed=0,
        max_length=MAX_LENGTH,
        extra_seeds=[1],
    )
    seeds = json.loads((tmp_path / "ablation" / SEEDS_FILE).read_text())
    assert [row["seed"] for row in seeds["seeds"]] == [0, 1]
    # the run's own seed's row is the kept models' test perplexity; the same seed trains the same models
    tokenizer, test = train.load_tokenizer(tmp_path / "student"), train.read_texts(lm_prepared, "test")
    kept = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert seeds["seeds"][0]["student_test_perplexity"] == pytest.approx(
        train.perplexity(kept, tokenizer, test, MAX_LENGTH, 16), rel=1e-5
    )
    assert result.metrics["val_perplexity"] == pytest.approx(lm_student[1].metrics["val_perplexity"], rel=1e-5)
    # another seed orders the batches differently: another model
    assert seeds["seeds"][1]["student_test_perplexity"] != seeds["seeds"][0]["student_test_perplexity"]
    mean = (seeds["seeds"][0]["student_test_perplexity"] + seeds["seeds"][1]["student_test_perplexity"]) / 2
    assert seeds["student_test_perplexity_mean"] == pytest.approx(mean)
    assert 0 <= seeds["distillation_wins"] <= 2
    assert result.metrics["student_test_perplexity_mean"] == seeds["student_test_perplexity_mean"]
