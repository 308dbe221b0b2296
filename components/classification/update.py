"""Incremental update: teach the champion's teacher and compressed student a new labelled batch without
forgetting the earlier ones (`miniaturize update --data FILE`, flows/update.py).

The warm start is a folder the registry holds for every classification version (`warm_start_folder` writes
it at registration, `run` writes the next one):

    teacher/   the fine-tuned teacher (PyTorch)
    student/   the compressed student before export: pruned, its vocabulary trimmed (PyTorch)
    replay.parquet          the bounded replay buffer: earlier labelled sentences (text, label, batch)
    batches/<name>/         every batch seen: its train/validation/test splits and data card

`run` (method `replay_kd`, the default):
1. the teacher trains on the new batch's train split plus the replay buffer; on replayed rows it also learns
   soft outputs, on new rows the labels alone. With `replay_targets: learned` (the default) a replayed row's
   soft outputs are those the teacher gave it when its batch was learned, kept with it in the buffer (dark
   experience replay, Buzzega et al. 2020), so each update is held to what the model knew of every earlier
   batch then, not to its parent, which may have drifted already; `previous` (and a row stored without them)
   takes the previous teacher's outputs now (learning without forgetting, Li & Hoiem 2017). Each epoch draws
   its rows batch-balanced (`balanced`): the new batch no more often than each earlier one, whose rows in the
   buffer are fewer. Early stopping reads accuracy on the validation splits of every batch seen, so the kept
   epoch is the one that serves all of them best;
2. the champion student is judged against the updated teacher on the batches it already knows; over the
   full run's accuracy budget there, it grows by one of the teacher's layers first (`grown_start`,
   `components.kit.grow`: `grow`, replay_kd only). It then keeps its architecture (layers, pruned heads and
   neurons); the wordpieces of the new batch that its trimmed vocabulary dropped are restored from the
   updated teacher's embeddings (`components.kit.vocab.restore_wordpieces`), so new words are not locked
   out; it is then distilled from the updated teacher on the same rows (on replayed rows the same stored
   outputs as the teacher learned), drawn the same way, and mixed back toward the weights it started from
   (`mix_back`: the share `mix_share`, or the one validation chooses).
Method `naive` is the ablation: both fine-tune on the new batch alone, no replay, no distillation.

It writes `out_dir/teacher`, `out_dir/student`, the next `out_dir/replay.parquet` (each row with the soft
outputs it was taught by, the new batch's those of the updated teacher) and `out_dir/prepared`
(train: the rows trained on; validation: every batch's validation split; test: the new batch's), which the
classification export and quantize components take as they are.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from components.config import IncrementalConfig, TrainConfig
from components.kit import grow
from components.kit.batches import check_labels, copy_batch, earlier_batches, read_labels
from components.kit.budget import AccuracyBudget
from components.kit.grow import Growth
from components.kit.interpolation import SHARES, choose_share, largest_drop, mean_accuracy, mixed_state
from components.kit.modeling import (
    Encoded,
    accuracy as accuracy_of,
    count_params,
    encode,
    predict_logits,
    save_model,
    seed_everything,
)
from components.kit.replay import batch_balanced_draw, replay_buffer, stored_logits, topped_up, with_logits
from components.kit.tracking import PrefixedTracker, StageResult, Tracker
from components.kit.training import Distillation, Objective, train
from components.kit.vocab import restore_wordpieces


def copy_model(model_dir: Path, out: Path) -> None:
    """A model folder without the teacher's cached soft targets (recomputed when needed)."""
    shutil.copytree(model_dir, out, ignore=shutil.ignore_patterns("soft_targets", "*_logits.npy"))


def warm_start_folder(
    teacher: Path,
    student: Path,
    prepared: Path,
    name: str,
    replay_size: int,
    seed: int,
    out: Path,
    layers: list[int] | None = None,
) -> dict:
    """The warm start of a version made by a full run: its teacher, its compressed student before export (with
    `layers`, the teacher layers it kept, recorded in its config for growing), its data as the first batch,
    and the first replay buffer drawn from that batch's train split."""
    out.mkdir(parents=True, exist_ok=True)
    copy_model(teacher, out / "teacher")
    copy_model(student, out / "student")
    if layers is not None:
        grow.record_teacher_layers(out / "student", layers)
    copy_batch(prepared, out / "batches" / name)
    train_rows = pd.read_parquet(prepared / "train.parquet")[["text", "label"]]
    buffer = replay_buffer(None, train_rows, name, replay_size, seed)
    buffer.to_parquet(out / "replay.parquet", index=False)
    return {"batch": name, "replay_rows": len(buffer)}


def buffer_at_size(cfg: IncrementalConfig, replay: pd.DataFrame, earlier: dict[str, Path], seed: int) -> pd.DataFrame:
    """The champion's replay buffer, topped up to `replay_size` from the earlier batches' train splits the
    warm start keeps (`components.kit.replay.topped_up`): a larger `replay_size` than the buffer was built
    with takes effect at the next update, not only as later batches arrive."""
    trains = {b: pd.read_parquet(folder / "train.parquet")[["text", "label"]] for b, folder in earlier.items()}
    grown = topped_up(replay, trains, cfg.replay_size, seed)
    if len(grown) > len(replay):
        print(
            f"  update: replay buffer topped up from the earlier batches' train splits, {len(replay):,} -> "
            f"{len(grown):,} rows (incremental.replay_size {cfg.replay_size:,})",
            flush=True,
        )
    return grown


def training_rows(
    cfg: IncrementalConfig, batch: Path, name: str, replay: pd.DataFrame
) -> tuple[pd.DataFrame, np.ndarray]:
    """(rows to train on, soft-term weight per row): the new train split (weight 0: labels alone), then with
    `replay_kd` the replay buffer (weight alpha: the previous model teaches them too). Each row keeps its
    batch's name (`batch` column; the new batch's is `name`)."""
    new = pd.read_parquet(batch / "train.parquet")[["text", "label"]].assign(batch=name)
    if cfg.method == "naive":
        return new.reset_index(drop=True), np.zeros(len(new))
    rows = pd.concat([new, replay[["text", "label", "batch"]]], ignore_index=True)
    return rows, np.concatenate([np.zeros(len(new)), np.full(len(replay), cfg.alpha)])


def objective(cfg: IncrementalConfig, rows: pd.DataFrame) -> Objective:
    """What both models minimise: one label per row, each epoch's rows drawn batch-balanced with
    `balanced` (`components.kit.replay.batch_balanced_draw`; the naive ablation's one batch: every row once):
    as many draws as the new batch (`training_rows`' first rows) has rows plus at most `replay_draws`."""
    draw = batch_balanced_draw(rows["batch"]) if cfg.balanced else None
    if draw is None:
        return Objective()
    new = int((rows["batch"] == rows["batch"].iloc[0]).sum())
    return Objective(sampling=lambda _labels: draw, draws=new + min(len(rows) - new, cfg.replay_draws))


def validation_rows(cfg: IncrementalConfig, batch: Path, name: str, earlier: dict[str, Path]) -> pd.DataFrame:
    """Early stopping reads every batch seen (naive: the new batch alone, as fine-tuning on it would); each
    row keeps its batch's name (`batch` column), the new batch's first."""
    folders = {name: batch} | ({} if cfg.method == "naive" else earlier)
    return pd.concat(
        [pd.read_parquet(f / "validation.parquet")[["text", "label"]].assign(batch=b) for b, f in folders.items()],
        ignore_index=True,
    )


def train_config(cfg: IncrementalConfig, epochs: int, lr: float, max_length: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, lr=lr, batch_size=cfg.batch_size, patience=cfg.patience, max_length=max_length)


def load_encoded(model_dir: Path, rows: pd.DataFrame, val: pd.DataFrame, max_length: int):
    """(model, tokenizer, labels, training rows, validation rows encoded by the model's own tokenizer)."""
    labels = read_labels(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True)
    train_set = encode(tokenizer, rows["text"].tolist(), rows["label"].tolist(), labels, max_length)
    val_set = encode(tokenizer, val["text"].tolist(), val["label"].tolist(), labels, max_length)
    return model, tokenizer, labels, train_set, val_set


def predict_rows(model, data: Encoded, pad_id: int, index: np.ndarray) -> np.ndarray:
    """The model's outputs on the rows `index` of `data` (one row each, in that order): a row whose soft
    outputs are known already costs no forward pass."""
    if not len(index):
        return np.zeros((0, model.config.num_labels), dtype=np.float32)
    return predict_logits(model, Encoded([data.input_ids[i] for i in index], data.labels[index]), pad_id)


def fit(
    model, tokenizer, labels, train_set, val_set, cfg: TrainConfig, kd, out: Path, tracker, seed, desc, goal, extra=None
):
    """Train (best validation epoch kept), save the model folder to `out`; returns its training figures."""
    outcome = train(
        model, train_set, val_set, cfg, tokenizer.pad_token_id, tracker, seed, kd=kd, desc=desc, objective=goal
    )
    metrics = {
        "val_accuracy": outcome.best_val_accuracy,
        "epochs_run": outcome.epochs_run,
        "examples": outcome.examples,
        "train_seconds": outcome.seconds,
        **(extra or {}),
    }
    save_model(model, tokenizer, labels, out, metrics)
    return metrics


def update_teacher(
    cfg: IncrementalConfig,
    teacher_dir: Path,
    rows: pd.DataFrame,
    row_alpha: np.ndarray,
    val: pd.DataFrame,
    out: Path,
    tracker: Tracker,
    seed: int,
    max_length: int,
    stored: np.ndarray | None = None,
) -> tuple[dict, np.ndarray | None]:
    """Train the teacher (see the module); returns its training figures and the soft outputs its replayed
    rows (`row_alpha` > 0) were taught by, None when none were. `stored`: the replay buffer's soft outputs,
    one row per replayed row in order, NaN where it has none."""
    model, tokenizer, labels, train_set, val_set = load_encoded(teacher_dir, rows, val, max_length)
    kd, replay_targets = None, None
    if cfg.method == "replay_kd" and row_alpha.any():
        replayed = row_alpha > 0
        replay_targets = np.full((int(replayed.sum()), len(labels)), np.nan, dtype=np.float32)
        if cfg.replay_targets == "learned" and stored is not None:
            replay_targets = stored.copy()
            known = int((~np.isnan(stored).any(axis=1)).sum())
            print(f"  update: {known} of {len(stored)} replayed rows taught by their stored outputs", flush=True)
        # the rest by the previous teacher's outputs, taken before it changes
        missing = np.isnan(replay_targets).any(axis=1)
        replay_targets[missing] = predict_rows(
            model, train_set, tokenizer.pad_token_id, np.flatnonzero(replayed)[missing]
        )
        targets = np.zeros((len(rows), len(labels)), dtype=np.float32)  # new rows: labels alone (weight 0)
        targets[replayed] = replay_targets
        kd = Distillation(targets, cfg.alpha, cfg.temperature, row_alpha=row_alpha)
    settings = train_config(cfg, cfg.teacher_epochs, cfg.teacher_lr, max_length)
    goal = objective(cfg, rows)
    metrics = fit(
        model, tokenizer, labels, train_set, val_set, settings, kd, out, tracker, seed, "update teacher", goal
    )
    return metrics, replay_targets


def update_student(
    cfg: IncrementalConfig,
    student_dir: Path,
    teacher_dir: Path,
    rows: pd.DataFrame,
    val: pd.DataFrame,
    new_texts: list[str],
    out: Path,
    tracker: Tracker,
    seed: int,
    max_length: int,
    replay_targets: np.ndarray | None = None,
) -> dict:
    """Restore the new batch's wordpieces, distil, mix back (see the module); returns the training figures,
    with the updated teacher's soft outputs on every row (`teacher_logits`, replay_kd only). `replay_targets`:
    what teaches the replayed rows (`rows`' last rows, one each) instead of the updated teacher."""
    restored = restore_wordpieces(student_dir, teacher_dir, new_texts, out, max_length)
    if restored["added"]:
        print(
            f"  update: {restored['added']} wordpieces of the new batch restored into the student's vocabulary "
            f"({restored['vocab_before']:,} -> {restored['vocab_after']:,}), "
            f"e.g. {', '.join(restored['added_pieces'][:8])}",
            flush=True,
        )
    model, tokenizer, labels, train_set, val_set = load_encoded(out, rows, val, max_length)
    kd, teacher_logits = None, None
    if cfg.method == "replay_kd":
        # the updated teacher's outputs on the same rows, through its own (full) vocabulary
        taught = cfg.replay_targets == "learned" and replay_targets is not None and len(replay_targets)
        # rows the replay targets teach need no pass of the teacher (NaN in `teacher_logits`)
        first = len(rows) - len(replay_targets) if taught else len(rows)
        teacher, teacher_tok, _, teacher_set, _ = load_encoded(teacher_dir, rows.iloc[:first], val, max_length)
        teacher_logits = np.full((len(rows), len(labels)), np.nan, dtype=np.float32)
        teacher_logits[:first] = predict_logits(teacher, teacher_set, teacher_tok.pad_token_id)
        targets = teacher_logits.copy()
        if taught:
            targets[first:] = replay_targets
        kd = Distillation(targets, cfg.alpha, cfg.temperature)
        del teacher
    # the champion student (its vocabulary grown): the start the trained weights are mixed back toward
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    settings = train_config(cfg, cfg.student_epochs, cfg.student_lr, max_length)
    extra = {
        "wordpieces_restored": restored["added"],
        "vocab_size": restored["vocab_after"],
        "params": count_params(model),
    }
    goal = objective(cfg, rows)
    metrics = fit(
        model, tokenizer, labels, train_set, val_set, settings, kd, out, tracker, seed, "update student", goal, extra
    )
    if cfg.method == "replay_kd" and cfg.mix:
        metrics |= mix_back(cfg, model, start, tokenizer, labels, val, max_length)
        save_model(model, tokenizer, labels, out, metrics)
        tracker.log_metrics({"mix_share": metrics["mix_share"]})
    return metrics | {"restored_pieces": restored["added_pieces"], "teacher_logits": teacher_logits}


def mix_back(cfg: IncrementalConfig, model, start: dict, tokenizer, labels, val: pd.DataFrame, max_length: int):
    """Load into `model` the mix of `start` and its trained weights: `mix_share`, or when that is None the
    share validation chooses (`components.kit.interpolation`); returns the share and each share's
    validation accuracy per batch."""
    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    batches = {
        name: encode(tokenizer, rows["text"].tolist(), rows["label"].tolist(), labels, max_length)
        for name, rows in val.groupby("batch", sort=False)
    }

    def scored(share: float) -> dict[str, float]:
        model.load_state_dict(mixed_state(start, trained, share))
        return {
            name: accuracy_of(predict_logits(model, data, tokenizer.pad_token_id), data.labels)
            for name, data in batches.items()
        }

    accuracy = {share: scored(share) for share in SHARES}
    new = val["batch"].iloc[0]
    chosen = cfg.mix_share is None
    share = choose_share(accuracy, new, cfg.mix_budget_points) if chosen else cfg.mix_share
    if share not in accuracy:  # a fixed share off the grid: measured too, for the report
        accuracy[share] = scored(share)
    model.load_state_dict(mixed_state(start, trained, share))
    how = "chosen on validation" if chosen else "incremental.mix_share"
    print(
        f"  update: student mixed back toward the champion's weights, share {share:.2f} of the update kept ({how}) "
        f"(validation mean {100 * mean_accuracy(accuracy[share]):.2f} vs {100 * mean_accuracy(accuracy[1.0]):.2f}"
        f" trained as is, {100 * mean_accuracy(accuracy[0.0]):.2f} champion; earlier batches lose at most "
        f"{largest_drop(accuracy, share, new):.2f} points)",
        flush=True,
    )
    return {
        "mix_share": share,
        "mix_val_accuracy": {f"{s:.2f}": per_batch for s, per_batch in sorted(accuracy.items())},
    }


def budget_check(
    budget: AccuracyBudget,
    teacher_dir: Path,
    student_dir: Path,
    val: pd.DataFrame,
    max_length: int,
    who: str = "the student",
    where: str = "every batch",
):
    """A student against the updated teacher on the validation rows `val` (by default every batch's), judged
    by the accuracy budget a full run holds its student to (`components.kit.budget`): over it, the student's
    architecture no longer holds what the teacher learned, which a full run on all the data would answer with
    a deeper or less pruned student."""
    logits = {}
    for name, folder in (("teacher", teacher_dir), ("student", student_dir)):
        model, tokenizer, _, _, data = load_encoded(folder, val.head(1), val, max_length)
        logits[name] = predict_logits(model, data, tokenizer.pad_token_id)
        labels = np.asarray(data.labels)
    spent = budget.spent(accuracy_of, logits["teacher"], logits["student"], labels)
    print(
        f"  update: {who} spends {spent.describe()} of the updated teacher's validation accuracy over "
        f"{where}: {'within' if spent.within else 'over'} the budget a full run holds its student to, "
        f"{budget.describe()}",
        flush=True,
    )
    return spent


def grown_start(
    cfg: IncrementalConfig,
    budget: AccuracyBudget | None,
    growth: Growth | None,
    student_dir: Path,
    teacher_dir: Path,
    rows: pd.DataFrame,
    val: pd.DataFrame,
    name: str,
    out: Path,
    seed: int,
    max_length: int,
) -> tuple[Path, dict]:
    """(the student the update trains, what was decided): the champion's `student_dir`, or, when it is over
    `budget` against the updated teacher on the validation splits of the batches it already knows, a copy
    grown by the teacher's next layer (`components.kit.grow`) written to `out`. Nothing is judged
    for the naive ablation, with `grow` off, or without a budget or `growth`."""
    if cfg.method != "replay_kd" or not cfg.grow or budget is None or growth is None:
        return student_dir, {}
    known = val[val["batch"] != name]
    spent = budget_check(budget, teacher_dir, student_dir, known, max_length, "the champion student", "its batches")
    decided = {"known_spent_points": spent.points, "known_within_budget": float(spent.within)}
    if spent.within:
        return student_dir, decided
    layers = grow.teacher_layers(student_dir, growth.layers)
    depth = AutoConfig.from_pretrained(teacher_dir).num_hidden_layers
    grown = None if layers is None else grow.next_layers(layers, growth.deeper, depth)
    if grown is None:
        why = "its teacher layers are not recorded" if layers is None else "no deeper layers are left to add"
        print(f"  update: the student is not grown: {why} (distill.deeper_layers)", flush=True)
        return student_dir, decided
    # the inserted block's FFN neurons are chosen on a sample of the update's rows, taught by the teacher
    sample = rows.sample(n=min(len(rows), grow.SCORING_BATCHES * cfg.batch_size), random_state=seed)
    _, tokenizer, _, scoring, _ = load_encoded(student_dir, sample, val.head(1), max_length)
    teacher, teacher_tok, _, teacher_set, _ = load_encoded(teacher_dir, sample, val.head(1), max_length)
    logits = predict_logits(teacher, teacher_set, teacher_tok.pad_token_id)
    result = grow.grow(
        student_dir,
        teacher,
        layers,
        grown,
        scoring,
        logits,
        tokenizer.pad_token_id,
        out,
        seed,
        cfg.batch_size,
        cfg.alpha,
        cfg.temperature,
    )
    del teacher
    print(
        f"  update: the student grows by the teacher's layer {result['inserted']}: teacher layers {layers} -> "
        f"{grown}, {result['params_before']:,} -> {result['params_after']:,} parameters",
        flush=True,
    )
    return out, decided | {
        "grown_layer": result["inserted"],
        "grown_params": result["params_after"] - result["params_before"],
        "grown_params_ratio": result["params_after"] / result["params_before"],
    }


def write_prepared(rows: pd.DataFrame, val: pd.DataFrame, batch: Path, labels: list[str], out: Path) -> None:
    """The data the export and quantize components read: the rows trained on, every batch's validation
    split, the new batch's test split."""
    out.mkdir(parents=True, exist_ok=True)
    rows.to_parquet(out / "train.parquet", index=False)
    val[["text", "label"]].to_parquet(out / "validation.parquet", index=False)
    shutil.copy2(batch / "test.parquet", out / "test.parquet")
    card = json.loads((batch / "data_card.json").read_text())
    (out / "data_card.json").write_text(json.dumps(card | {"labels": labels}, indent=2))


def run(
    cfg: IncrementalConfig,
    champion: Path,
    batch: Path,
    name: str,
    out_dir: Path,
    tracker: Tracker,
    seed: int,
    max_length: int,
    budget: AccuracyBudget | None = None,
    growth: Growth | None = None,
) -> StageResult:
    """Update the champion's warm start (`champion`, see the module) with the prepared batch `batch`, called
    `name` (a name no earlier batch has); write the next warm start (the new batch added to `batches/`) and
    the export's data into `out_dir`. With a `budget`, the champion student is judged against the updated
    teacher on the batches it knows before it is trained, and grown by `growth` when over it (`grown_start`);
    the updated student is judged again on every batch (`budget_check`, reported)."""
    seed_everything(seed)
    earlier = earlier_batches(champion)
    if name in earlier:
        raise ValueError(f"the champion has already seen a batch called {name!r}")
    labels = read_labels(champion / "teacher")
    check_labels(batch, labels, "the champion")
    replay = pd.read_parquet(champion / "replay.parquet")
    if cfg.method == "replay_kd":
        replay = buffer_at_size(cfg, replay, earlier, seed)
    rows, row_alpha = training_rows(cfg, batch, name, replay)
    stored = stored_logits(replay, len(labels))
    val = validation_rows(cfg, batch, name, earlier)
    tracker.log_params(
        cfg.model_dump() | {"batch": name, "train_rows": len(rows), "replay_rows": int((row_alpha > 0).sum())}
    )
    print(
        f"  update: {len(rows) - int((row_alpha > 0).sum())} new rows + {int((row_alpha > 0).sum())} replayed "
        f"({cfg.method}); validation over {len(val)} sentences",
        flush=True,
    )
    teacher, replay_targets = update_teacher(
        cfg,
        champion / "teacher",
        rows,
        row_alpha,
        val,
        out_dir / "teacher",
        PrefixedTracker(tracker, "teacher."),
        seed,
        max_length,
        stored,
    )
    new_texts = pd.concat([pd.read_parquet(batch / f"{s}.parquet")["text"] for s in ("train", "validation")]).tolist()
    start, grown = grown_start(
        cfg,
        budget,
        growth,
        champion / "student",
        out_dir / "teacher",
        rows,
        val,
        name,
        out_dir / "grown",
        seed,
        max_length,
    )
    student = update_student(
        cfg,
        start,
        out_dir / "teacher",
        rows,
        val,
        new_texts,
        out_dir / "student",
        PrefixedTracker(tracker, "student."),
        seed,
        max_length,
        replay_targets,
    )
    # the next buffer keeps each row's soft outputs: the replayed rows' as they were taught, the new batch's
    # from the updated teacher (the naive ablation: none for the new batch)
    new = rows["batch"].to_numpy() == name
    learned = student["teacher_logits"]
    buffer = replay_buffer(
        replay if replay_targets is None else with_logits(replay, replay_targets),
        with_logits(rows.loc[new, ["text", "label"]], None if learned is None else learned[new]),
        name,
        cfg.replay_size,
        seed,
    )
    buffer.to_parquet(out_dir / "replay.parquet", index=False)
    for earlier_name, folder in earlier.items():
        copy_batch(folder, out_dir / "batches" / earlier_name)
    copy_batch(batch, out_dir / "batches" / name)
    card = out_dir / "batches" / name / "data_card.json"
    card.write_text(json.dumps(json.loads(card.read_text()) | {"arrived": len(earlier)}, indent=2))
    write_prepared(rows, val, batch, labels, out_dir / "prepared")
    metrics = {f"teacher.{k}": v for k, v in teacher.items()} | {
        f"student.{k}": v
        for k, v in student.items()
        if k not in ("restored_pieces", "mix_val_accuracy", "teacher_logits")
    }
    shutil.rmtree(out_dir / "grown", ignore_errors=True)  # the grown start: trained into student/
    metrics |= {f"student.{k}": v for k, v in grown.items()}
    if budget is not None:
        spent = budget_check(budget, out_dir / "teacher", out_dir / "student", val, max_length)
        metrics |= {"student.spent_points": spent.points, "student.within_budget": float(spent.within)}
        metrics |= {} if spent.bound is None else {"student.spent_bound": spent.bound}
    metrics |= {
        "examples": teacher["examples"] + student["examples"],
        "train_rows": len(rows),
        "replay_rows": int((row_alpha > 0).sum()),
        "next_replay_rows": len(buffer),
    }
    tracker.log_metrics({k: float(v) for k, v in metrics.items()})
    return StageResult(
        metrics={k: float(v) for k, v in metrics.items()},
        outputs={"warm_start": out_dir},
        info={"restored_pieces": student["restored_pieces"], "mix_val_accuracy": student.get("mix_val_accuracy")},
    )
