"""Stages finetune, distill and prune of the causal-lm task: train the teacher, distill it into fewer blocks,
prune MLP neurons (attention heads too, outside the pipeline: see ONNX below).

One module for three stages: they share the training loop (`fit`, whose epoch is the kit's `train_epoch`), its
loss and perplexity, which no other module uses. Every model folder is `save_pretrained` output of a
`GPT2LMHeadModel` (safetensors) with its tokenizer beside it (bos/eos/pad `<|endoftext|>`, left padding, no
`token_type_ids`).

- `train_teacher`: a GPT-2 trained from scratch on the train split with the ingest stage's byte-level
  BPE (`init: scratch`), or a hub / local causal LM fine-tuned with its own tokenizer (`init: pretrained`).
- `distill`: the student keeps the teacher's embeddings, final layer norm, tied LM head and the blocks
  in `lm.distill.layers`; it learns alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * CE per
  token. With `ablation`, the same student is also trained on cross-entropy alone.
- `prune`: MLP neurons (`ffn_ratio`, the same share from every block, `config.n_inner`) and attention heads
  (`head_ratio`) scored by gradient x activation (for a head, |dL/d gate| of a gate on its context vector,
  Michel et al., 2019) over `importance_batches` training batches, normalised per layer; only what is to
  be removed is scored. The globally lowest `round(head_ratio * heads)` heads are removed physically with
  `model.prune_heads` (at least one head stays in every layer; GPT-2 records them in `config.pruned_heads`,
  so the folder reloads to the same model). Then the model recovers with the same KD loss as `distill`.
  The scoring hooks and the selection (`heads_to_prune`, `neurons_to_keep`) are `components.kit.pruning`,
  shared with classification. The pipeline refuses `head_ratio` > 0 (`LMConfig`), for the reason below.

ONNX: a GPT-2 with pruned heads, unevenly or uniformly, does NOT export with Optimum's stock
`text-generation-with-past` (optimum 2.1 / optimum-onnx 0.1): the exporter's dummy past key values, and
`ORTModelForCausalLM`'s empty first-step cache, are sized from `config.n_head` and `n_embd / n_head`,
while a pruned layer has fewer heads ("Sizes of tensors must match except in dimension 2"). Uniform
pruning does not help: GPT-2's config cannot describe heads narrower than `n_embd / n_head`. MLP-neuron
pruning keeps the config consistent and exports, with ONNX Runtime's greedy output equal to PyTorch's.

Sequences are `text + <|endoftext|>`, truncated to `max_length` tokens (the end token kept); the first
token is context only, so perplexity is exp(mean NLL) over every later token and the end token.
"""

from __future__ import annotations

import json
import math
import operator
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import prune_conv1d_layer

from components.causal_lm import HISTORY_FILE, SEEDS_FILE
from components.config import DistributedConfig, LMDistillConfig, LMPruneConfig, LMTeacherConfig
from components.kit.distributed import DataParallel, is_main_process, same_on_every_rank, wait_for_everyone
from components.kit.losses import soft_kl_rows
from components.kit.modeling import (
    count_params,
    length_bucketed_batches,
    pad_rows,
    seed_everything,
)
from components.kit.pruning import head_scores, heads_to_prune, neuron_scores, neurons_to_keep, retained_inputs
from components.kit.sources import resolve_model_source
from components.kit.tracking import PrefixedTracker, StageResult, Tracker
from components.kit.training import BestEpoch, Schedule, report_epoch, train_epoch

WARMUP_SHARE = 0.05  # of all optimizer steps, linear warm-up before the linear decay
WEIGHT_DECAY = 0.01


# ---- data -------------------------------------------------------------------------------------------


def read_texts(data_dir: Path, split: str) -> list[str]:
    path = Path(data_dir) / f"{split}.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: re-run the ingest stage")
    return pd.read_parquet(path)["text"].astype(str).tolist()


def prepare_tokenizer(tokenizer):
    """The tokenizer format every model folder carries: pad = eos if unset, left padding, no token_type_ids."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    return tokenizer


def encode(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of `text + eos` per sentence, cut to max_length tokens with the eos kept."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [row[: max_length - 1] + [tokenizer.eos_token_id] for row in ids]


def pad_id(tokenizer) -> int:
    # Padded positions are masked out, so any id serves; a hub tokenizer may not set one.
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def batches(encoded: list[list[int]], batch_size: int, shuffle: bool, seed: int = 0) -> list[list[list[int]]]:
    order = length_bucketed_batches([len(x) for x in encoded], batch_size, shuffle=shuffle, seed=seed)
    return [[encoded[i] for i in index] for index in order]


# ---- losses -----------------------------------------------------------------------------------------


def shifted(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at the positions that predict a real next token (n, vocab), and those targets (n,)."""
    keep = batch["attention_mask"][:, 1:].bool()
    return logits[:, :-1][keep], batch["input_ids"][:, 1:][keep]


def lm_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    targets: torch.Tensor,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """Per token: alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * CE, averaged over tokens.

    Inputs are already restricted to real positions: (tokens, vocab) logits, (tokens,) targets.
    Without teacher logits, or with alpha 0, this is the plain next-token cross-entropy.
    """
    ce = F.cross_entropy(student_logits, targets)
    if teacher_logits is None or alpha == 0.0:
        return ce
    kl = soft_kl_rows(student_logits, teacher_logits, temperature).mean()
    return alpha * kl + (1.0 - alpha) * ce


@torch.inference_mode()
def perplexity(model: nn.Module, tokenizer, texts: list[str], max_length: int, batch_size: int = 32) -> float:
    """exp of the mean next-token NLL over all tokens of `text + eos` (the first token is context)."""
    model.eval()
    device = next(model.parameters()).device  # the CPU, or the GPU a training loop placed the model on
    total_nll, total_tokens = 0.0, 0
    for rows in batches(encode(tokenizer, texts, max_length), batch_size, shuffle=False):
        batch = {k: v.to(device) for k, v in pad_rows(rows, pad_id(tokenizer)).items()}
        logits, targets = shifted(model(**batch).logits.float(), batch)
        total_nll += F.cross_entropy(logits, targets, reduction="sum").item()
        total_tokens += targets.numel()
    return math.exp(total_nll / max(1, total_tokens))


# ---- the training loop ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    """What every fit reads: the tokenizer, the prepared train and validation texts, the length cap."""

    tokenizer: object
    train: list[str]
    validation: list[str]
    max_length: int

    @classmethod
    def read(cls, tokenizer, data_dir: Path, max_length: int) -> Corpus:
        return cls(tokenizer, read_texts(data_dir, "train"), read_texts(data_dir, "validation"), max_length)

    def val_perplexity(self, model: nn.Module, batch_size: int) -> float:
        return perplexity(model, self.tokenizer, self.validation, self.max_length, batch_size)


@dataclass(frozen=True)
class Budget:
    """How long and how fast one fit trains."""

    epochs: int
    batch_size: int
    lr: float


@dataclass
class Teaching:
    """A frozen teacher whose soft next-token distributions the student learns."""

    model: nn.Module
    alpha: float
    temperature: float


@dataclass
class FitOutcome:
    best_epoch: int
    best_val_perplexity: float
    seconds: float
    history: list[dict[str, float]]

    def metrics(self, params: int) -> dict[str, float]:
        """What a training stage reports of its fit, beside the model's parameter count."""
        return {
            "val_perplexity": self.best_val_perplexity,
            "best_epoch": float(self.best_epoch),
            "train_seconds": self.seconds,
            "params": float(params),
        }


def adamw(model: nn.Module, lr: float) -> torch.optim.AdamW:
    """AdamW with WEIGHT_DECAY on the weight matrices, none on biases and layer norms (fewer than 2 dims); the
    fused kernel, one pass over the parameters per step."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, fused=True
    )


def fit(
    model: nn.Module,
    corpus: Corpus,
    budget: Budget,
    *,
    tracker: Tracker,
    seed: int,
    teaching: Teaching | None = None,
    desc: str = "train",
    dist: DistributedConfig | None = None,
    patience: int | None = None,
) -> FitOutcome:
    """AdamW with linear warm-up and decay; validation perplexity after every epoch; best epoch restored.
    With `patience`, training stops once that many epochs in a row have not improved validation perplexity
    (`budget.epochs` is then the most it trains; the schedule still decays over all of them).
    Data-parallel under a multi-process launch (components.kit.distributed): each process takes its share of
    every batch and runs the teacher, when there is one, on that share. The epoch itself is
    `components.kit.training.train_epoch`, as in the classifier loop."""
    seed_everything(seed)
    dp = DataParallel(dist or DistributedConfig())
    home = next(model.parameters()).device  # the model (and the teacher) go back there when training ends
    epochs, batch_size = budget.epochs, budget.batch_size
    pad = pad_id(corpus.tokenizer)
    train_ids = encode(corpus.tokenizer, corpus.train, corpus.max_length)
    schedule = Schedule.linear(budget.lr, math.ceil(len(train_ids) / batch_size) * epochs, WARMUP_SHARE)
    raw = model
    model, optimizer = dp.prepare(model, adamw(model, budget.lr))
    if teaching is not None:
        teaching.model.eval().requires_grad_(False).to(dp.device)

    def part_loss(rows: np.ndarray) -> torch.Tensor:
        return batch_loss(model, dp.to_device(pad_rows([train_ids[j] for j in rows], pad)), teaching)

    def token_share(part: np.ndarray, index: np.ndarray) -> float:
        # The loss is a mean over predicted tokens (all but each sentence's first): each share of a batch
        # weighs by its tokens in the whole batch.
        return dp.weight(sum(len(train_ids[j]) - 1 for j in part), max(1, sum(len(train_ids[j]) - 1 for j in index)))

    best = BestEpoch(math.inf, operator.lt)
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        epoch_started = time.perf_counter()
        order = length_bucketed_batches([len(x) for x in train_ids], batch_size, shuffle=True, seed=seed * 1000 + epoch)
        train_loss = train_epoch(
            dp, model, optimizer, order, schedule, part_loss, token_share, f"{desc} epoch {epoch}/{epochs}", 3
        )
        # Every process scores the whole validation split with the same weights; rank 0's figure decides.
        val_ppl = same_on_every_rank(corpus.val_perplexity(raw, batch_size))
        record = {
            "train_loss": train_loss,
            "val_perplexity": val_ppl,
            "epoch_seconds": time.perf_counter() - epoch_started,
        }
        report_epoch(
            history,
            record,
            epoch,
            tracker,
            dp,
            f"{desc} epoch {epoch}: loss {train_loss:.3f}, val perplexity {val_ppl:.2f}",
        )
        best.update(val_ppl, epoch, raw)
        if patience is not None and best.stale >= patience and epoch < epochs:
            if dp.main:
                print(f"  {desc}: early stop, best epoch {best.epoch} (val perplexity {best.value:.2f})", flush=True)
            break
    raw = dp.finish(model, home)
    if teaching is not None:
        teaching.model.to(home)
    if best.state is not None:
        raw.load_state_dict(best.state)
    raw.eval()
    return FitOutcome(best.epoch, best.value, time.perf_counter() - started, history)


def batch_loss(model: nn.Module, batch: dict[str, torch.Tensor], teaching: Teaching | None) -> torch.Tensor:
    logits, targets = shifted(model(**batch).logits, batch)
    teacher_logits = None
    if teaching is not None and teaching.alpha > 0:
        with torch.no_grad():
            teacher_logits, _ = shifted(teaching.model(**batch).logits, batch)
    return lm_kd_loss(
        logits, teacher_logits, targets, teaching.alpha if teaching else 0.0, teaching.temperature if teaching else 1.0
    )


def save(model: nn.Module, tokenizer, out_dir: Path) -> None:
    """Rank 0 writes (every process holds the same weights); all processes wait for it."""
    if is_main_process():
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
    wait_for_everyone()


def load_model(model_dir: Path) -> nn.Module:
    return AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)


def load_tokenizer(model_dir: Path):
    return prepare_tokenizer(AutoTokenizer.from_pretrained(model_dir))


# ---- stage: teacher ---------------------------------------------------------------------------------


def scratch_model(cfg: LMTeacherConfig, tokenizer) -> GPT2LMHeadModel:
    arch = cfg.architecture
    if cfg.max_length > arch.n_positions:
        raise ValueError(f"lm.teacher.max_length {cfg.max_length} exceeds architecture.n_positions {arch.n_positions}")
    eos = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=arch.n_positions,
        n_embd=arch.n_embd,
        n_layer=arch.n_layer,
        n_head=arch.n_head,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    return GPT2LMHeadModel(config)


def train_teacher(
    cfg: LMTeacherConfig,
    data_dir: Path,
    out_dir: Path,
    tracker: Tracker,
    *,
    seed: int,
    dist: DistributedConfig | None = None,
) -> StageResult:
    """The teacher: built from `cfg.architecture` on the data stage's tokenizer, or loaded from `cfg.model`;
    trained on the train split until validation perplexity stops improving (`cfg.patience` epochs without a
    better one, at most `cfg.epochs`), the epoch with the best validation perplexity kept."""
    seed_everything(seed)
    if cfg.init == "scratch":
        tokenizer = load_tokenizer(Path(data_dir) / "tokenizer")
        tokenizer.model_max_length = cfg.architecture.n_positions
        model = scratch_model(cfg, tokenizer)
    else:
        source = resolve_model_source(cfg.model)
        tokenizer = load_tokenizer(source)
        model = AutoModelForCausalLM.from_pretrained(source, use_safetensors=True)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
    corpus = Corpus.read(tokenizer, data_dir, cfg.max_length)
    params = count_params(model)
    tracker.log_params(cfg.model_dump(mode="json") | {"params": params, "train_rows": len(corpus.train)})

    untrained_ppl = corpus.val_perplexity(model, cfg.batch_size)
    budget = Budget(cfg.epochs, cfg.batch_size, cfg.lr)
    outcome = fit(model, corpus, budget, tracker=tracker, seed=seed, desc="teacher", dist=dist, patience=cfg.patience)
    save(model, tokenizer, out_dir)
    if is_main_process():
        curve = {
            "untrained_val_perplexity": untrained_ppl,
            "best_epoch": outcome.best_epoch,
            "max_epochs": cfg.epochs,
            "patience": cfg.patience,
            "epochs": outcome.history,
        }
        (Path(out_dir) / HISTORY_FILE).write_text(json.dumps(curve, indent=2) + "\n")
    metrics = outcome.metrics(params) | {"untrained_val_perplexity": untrained_ppl, "epochs_run": len(outcome.history)}
    tracker.log_metrics({k: v for k, v in metrics.items() if k != "params"})
    return StageResult(metrics=metrics, outputs={"model": out_dir}, info={"history": outcome.history})


# ---- stage: distill ---------------------------------------------------------------------------------


def keep_blocks(model: GPT2LMHeadModel, layers: list[int]) -> GPT2LMHeadModel:
    """Keep only the given transformer blocks, in order (embeddings, ln_f and the tied head stay)."""
    blocks = getattr(getattr(model, "transformer", None), "h", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(f"{type(model).__name__} is not a GPT-2 style model (no transformer.h)")
    if not layers or max(layers) >= len(blocks) or min(layers) < 0:
        raise ValueError(f"lm.distill.layers {layers} must be blocks of the teacher's 0..{len(blocks) - 1}")
    pruned = {int(k): v for k, v in (model.config.pruned_heads or {}).items()}
    model.transformer.h = nn.ModuleList(blocks[i] for i in layers)
    for new_index, block in enumerate(model.transformer.h):
        block.attn.layer_idx = new_index  # the KV cache is addressed by this index
    model.config.n_layer = len(layers)
    model.config.pruned_heads = {new: pruned[old] for new, old in enumerate(layers) if pruned.get(old)}
    return model


def distill(
    cfg: LMDistillConfig,
    teacher_dir: Path,
    data_dir: Path,
    out_dir: Path,
    ablation_dir: Path,
    tracker: Tracker,
    *,
    seed: int,
    max_length: int,
    dist: DistributedConfig | None = None,
    extra_seeds: list[int] | tuple[int, ...] = (),
) -> StageResult:
    """The student (`cfg.layers` of the teacher) trained on the KD loss; with `cfg.ablation`, the same student
    trained without the teacher. With `extra_seeds` (and the ablation), both are trained again with each of
    those seeds (teacher and split unchanged; the seed orders the batches and draws dropout) and every seed's
    test perplexity, this run's own seed first, goes to `ablation_dir/SEEDS_FILE`: whether distillation beats
    the ablation beyond seed noise. Only this run's seed's models are kept."""
    seed_everything(seed)
    tokenizer = load_tokenizer(teacher_dir)
    teacher = load_model(teacher_dir)
    student = keep_blocks(load_model(teacher_dir), cfg.layers)
    corpus = Corpus.read(tokenizer, data_dir, max_length)
    params = count_params(student)
    tracker.log_params(cfg.model_dump(mode="json") | {"params": params, "teacher_params": count_params(teacher)})

    teacher_ppl = corpus.val_perplexity(teacher, cfg.batch_size)
    budget = Budget(cfg.epochs, cfg.batch_size, cfg.lr)
    teaching = Teaching(teacher, cfg.alpha, cfg.temperature)
    outcome = fit(student, corpus, budget, tracker=tracker, seed=seed, teaching=teaching, desc="distill", dist=dist)
    save(student, tokenizer, out_dir)
    metrics = outcome.metrics(params) | {"teacher_val_perplexity": teacher_ppl}
    if cfg.ablation:
        # The same student, from the same initialisation, without the teacher: what distillation buys.
        alone = keep_blocks(load_model(teacher_dir), cfg.layers)
        alone_tracker = PrefixedTracker(tracker, "ablation.")
        ablation = fit(alone, corpus, budget, tracker=alone_tracker, seed=seed, desc="ablation (no teacher)", dist=dist)
        save(alone, tokenizer, ablation_dir)
        metrics |= {"ablation_val_perplexity": ablation.best_val_perplexity, "ablation_train_seconds": ablation.seconds}
        if extra_seeds:
            seeds = seed_comparison(
                cfg, teacher_dir, data_dir, corpus, budget, teaching, tracker, (student, alone), seed, extra_seeds, dist
            )
            if is_main_process():
                (Path(ablation_dir) / SEEDS_FILE).write_text(json.dumps(seeds, indent=2) + "\n")
            metrics |= {k: v for k, v in seeds.items() if isinstance(v, float)}
    tracker.log_metrics({k: v for k, v in metrics.items() if k != "params"})
    outputs = {"model": out_dir} | ({"ablation": ablation_dir} if cfg.ablation else {})
    return StageResult(metrics=metrics, outputs=outputs, info={"history": outcome.history})


def seed_comparison(
    cfg: LMDistillConfig,
    teacher_dir: Path,
    data_dir: Path,
    corpus: Corpus,
    budget: Budget,
    teaching: Teaching,
    tracker: Tracker,
    trained: tuple[nn.Module, nn.Module],
    seed: int,
    extra_seeds: list[int] | tuple[int, ...],
    dist: DistributedConfig | None,
) -> dict:
    """Test perplexity of the distilled student and of the ablation for `seed` (the models in `trained`) and
    for each extra seed (trained here, then dropped), with the means over all seeds."""
    test = read_texts(data_dir, "test")
    rows = [{"seed": seed, **test_perplexities(trained, corpus, test, cfg.batch_size)}]
    for extra in extra_seeds:
        pair = []
        for teacher_or_none, name in ((teaching, "distill"), (None, "ablation")):
            model = keep_blocks(load_model(teacher_dir), cfg.layers)
            fit(
                model,
                corpus,
                budget,
                tracker=PrefixedTracker(tracker, f"seed_{extra}.{name}."),
                seed=extra,
                teaching=teacher_or_none,
                desc=f"{name} (seed {extra})",
                dist=dist,
            )
            pair.append(model)
        rows.append({"seed": extra, **test_perplexities(tuple(pair), corpus, test, cfg.batch_size)})
    student = [r["student_test_perplexity"] for r in rows]
    alone = [r["student_without_teacher_test_perplexity"] for r in rows]
    return {
        "seeds": rows,
        "student_test_perplexity_mean": float(np.mean(student)),
        "student_without_teacher_test_perplexity_mean": float(np.mean(alone)),
        "student_test_perplexity_std": float(np.std(student)),
        "student_without_teacher_test_perplexity_std": float(np.std(alone)),
        "distillation_wins": float(sum(s < a for s, a in zip(student, alone))),  # seeds where it had the lower
    }


def test_perplexities(pair: tuple[nn.Module, nn.Module], corpus: Corpus, test: list[str], batch_size: int) -> dict:
    student, alone = pair
    return {
        "student_test_perplexity": perplexity(student, corpus.tokenizer, test, corpus.max_length, batch_size),
        "student_without_teacher_test_perplexity": perplexity(
            alone, corpus.tokenizer, test, corpus.max_length, batch_size
        ),
    }


# ---- stage: prune -----------------------------------------------------------------------------------


def head_counts(model: nn.Module) -> list[int]:
    return [block.attn.num_heads for block in model.transformer.h]


def importance(
    model: nn.Module,
    tokenizer,
    texts: list[str],
    max_length: int,
    n_batches: int,
    batch_size: int,
    teaching: Teaching,
    seed: int,
    *,
    heads: bool = True,
) -> tuple[list[np.ndarray] | None, list[np.ndarray]]:
    """Per layer: head scores (current heads,) and MLP neuron scores (n_inner,), gradient x activation
    (`components.kit.pruning`); the head scores only with `heads` (None without).

    A head's score is |sum over tokens of context x dLoss/dcontext| over its slice of the attention output,
    summed over sentences and batches: the gradient of the loss with respect to a per-sentence gate on the
    head. A neuron's score is the same on its activation (the MLP's c_proj input).
    """
    blocks = model.transformer.h
    watched = {("mlp", i): block.mlp.c_proj for i, block in enumerate(blocks)}  # input: the activations
    if heads:  # input of attn.c_proj: the heads' context vectors, concatenated
        watched |= {("attn", i): block.attn.c_proj for i, block in enumerate(blocks)}
    head_totals = [np.zeros(n) for n in head_counts(model)] if heads else None
    mlp_totals = [np.zeros(block.mlp.c_proj.weight.shape[0]) for block in blocks]
    model.eval()  # no dropout: the scores should reflect the model as it will run
    try:
        with retained_inputs(watched) as captured:
            for rows in batches(encode(tokenizer, texts, max_length), batch_size, shuffle=True, seed=seed)[:n_batches]:
                batch = pad_rows(rows, pad_id(tokenizer))
                model.zero_grad(set_to_none=True)
                batch_loss(model, batch, teaching).backward()
                mask = batch["attention_mask"].unsqueeze(-1).float()
                for i, block in enumerate(blocks):
                    if heads:
                        head_totals[i] += head_scores(captured[("attn", i)], mask, block.attn.num_heads)
                    mlp_totals[i] += neuron_scores(captured[("mlp", i)], mask)
    finally:
        model.zero_grad(set_to_none=True)
    return head_totals, mlp_totals


def prune_mlp(model: nn.Module, keep: list[np.ndarray]) -> None:
    """Remove MLP neurons physically (c_fc columns, c_proj rows) and record the width in `n_inner`."""
    for block, idx in zip(model.transformer.h, keep):
        index = torch.as_tensor(idx, dtype=torch.long)
        block.mlp.c_fc = prune_conv1d_layer(block.mlp.c_fc, index, dim=1)
        block.mlp.c_proj = prune_conv1d_layer(block.mlp.c_proj, index, dim=0)
    model.config.n_inner = int(len(keep[0]))


def original_head_ids(model: nn.Module, plan: dict[int, list[int]]) -> dict[int, list[int]]:
    """Positions among a layer's surviving heads -> the original head ids `prune_heads` expects."""
    mapped = {}
    for layer, heads in plan.items():
        attn = model.transformer.h[layer].attn
        alive = [h for h in range(attn.num_heads + len(attn.pruned_heads)) if h not in attn.pruned_heads]
        mapped[layer] = [alive[h] for h in heads]
    return mapped


def prune(
    cfg: LMPruneConfig,
    student_dir: Path,
    teacher_dir: Path,
    data_dir: Path,
    out_dir: Path,
    tracker: Tracker,
    *,
    seed: int,
    max_length: int,
    distill_cfg: LMDistillConfig,
    dist: DistributedConfig | None = None,
) -> StageResult:
    """Remove the lowest-scoring `head_ratio` of the heads and `ffn_ratio` of each block's MLP neurons, then
    recover with knowledge distillation from the teacher (alpha, temperature, batch size and lr of `distill_cfg`)."""
    seed_everything(seed)
    tokenizer = load_tokenizer(student_dir)
    model = load_model(student_dir)
    teaching = Teaching(load_model(teacher_dir), distill_cfg.alpha, distill_cfg.temperature)
    corpus = Corpus.read(tokenizer, data_dir, max_length)
    heads_before, params_before = sum(head_counts(model)), count_params(model)
    tracker.log_params(cfg.model_dump(mode="json") | {"heads_before": heads_before, "params_before": params_before})

    # Only what is removed is scored: the pipeline refuses head_ratio > 0 (see LMConfig), so heads seldom are.
    heads_out = int(round(cfg.head_ratio * heads_before))
    if heads_out or cfg.ffn_ratio > 0:
        # Every process scores the same weights on the same batches; rank 0's scores cut, so all cut alike.
        by_head, by_neuron = same_on_every_rank(
            importance(
                model,
                tokenizer,
                corpus.train,
                max_length,
                cfg.importance_batches,
                distill_cfg.batch_size,
                teaching,
                seed,
                heads=heads_out > 0,
            )
        )
        if heads_out and (plan := heads_to_prune(by_head, count=heads_out)):
            model.prune_heads(original_head_ids(model, plan))
        if cfg.ffn_ratio > 0:
            prune_mlp(model, neurons_to_keep(by_neuron, ratio=cfg.ffn_ratio))
    heads_after = sum(head_counts(model))
    print(
        f"  prune: removed {heads_before - heads_after} of {heads_before} heads, per layer now {head_counts(model)}"
        f"; MLP width {model.transformer.h[0].mlp.c_proj.weight.shape[0]}",
        flush=True,
    )
    ppl_before = corpus.val_perplexity(model, distill_cfg.batch_size)
    ppl, seconds = ppl_before, 0.0
    if cfg.epochs > 0 and count_params(model) < params_before:
        budget = Budget(cfg.epochs, distill_cfg.batch_size, distill_cfg.lr)
        outcome = fit(
            model, corpus, budget, tracker=tracker, seed=seed, teaching=teaching, desc="prune recovery", dist=dist
        )
        ppl, seconds = outcome.best_val_perplexity, outcome.seconds
    save(model, tokenizer, out_dir)
    metrics = {
        "heads_before": float(heads_before),
        "heads_after": float(heads_after),
        "params_before": float(params_before),
        "params": float(count_params(model)),
        "val_perplexity_before_recovery": ppl_before,
        "val_perplexity": ppl,
        "recovery_seconds": seconds,
    }
    tracker.log_metrics(metrics)
    return StageResult(
        metrics=metrics,
        outputs={"model": out_dir},
        info={"pruned_heads": {int(k): list(v) for k, v in model.config.pruned_heads.items()}},
    )
