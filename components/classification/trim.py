"""Stage, trim: keep only the wordpieces the task's data uses, shrinking the vocabulary and the embeddings.

On a 30,522-wordpiece BERT vocabulary at width 384 the embedding matrix is 11.7M parameters, most of a
small student. A sentiment corpus uses a fraction of those pieces. `trim` keeps the special tokens plus
every piece that the tokenizer produces on the given texts (the stage: the train split's, below), writes a
reduced WordPiece vocabulary, and slices the embedding rows to match, in the same order, so that:

- on text whose pieces are all kept, the trimmed tokenizer and model give exactly the original outputs
  (WordPiece's greedy longest match finds the same pieces, because every piece it chose is still there);
- an unseen word is split into the kept pieces that cover it, or becomes [UNK] when none do: a defined
  result, never an error.

Rare pieces (`min_count`): most of the kept rows are pieces the train split uses once or twice (on the
default job 12,649 pieces in train, 8,851 used at least twice), and each costs a full embedding row. With
`min_count` k > 1 the stage keeps only the pieces the train split uses at least k times, plus the single
characters (and their ## forms) that spell the rest, so a dropped word is split into kept pieces rather
than read as [UNK]. That changes what the model reads, so it is measured (decide, then act): each k from
the configured one down to 1 is scored on validation against the untrimmed model (counts come from the train
split only, so validation sentences are honest held-out text), and the first that loses at most
`max_drop_points`, and no more than the accuracy budget pruning left (`metrics.json` of the pruned
folder), is written. When none does, the vocabulary is kept whole: even k = 1 drops the pieces of every
word the train split never used, which text after deployment will have (measured on a user's 4-class set
of 3,514 training sentences: k = 1 over the train and validation texts, validation unchanged by
construction, cost 0.92 points on test). What was tried and chosen goes to `trim.json` in the output folder
and the stage's metrics.

Only WordPiece (BERT-family) tokenizers are handled; others are reported as not trimmable. The vocabulary
helpers live in `components.kit.vocab`, beside `restore_wordpieces`, which grows a trimmed vocabulary back
when new text arrives (incremental learning).

Run it as a stage: `miniaturize run --only trim` (or `dvc repro trim`).
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from components.config import TrimConfig
from components.kit.tracking import StageResult, Tracker
from components.kit.vocab import (
    KEPT_IDS_FILE,
    NotTrimmable,
    remap_added_tokens,
    trim_embeddings,
    trimmed_tokenizer_json,
    used_token_ids,
    wordpiece_vocab,
)

TRIM_FILE = "trim.json"


def fast_tokenizer(model_dir: Path):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not getattr(tokenizer, "is_fast", False):
        raise NotTrimmable("vocabulary trimming needs a fast tokenizer (tokenizer.json)")
    return tokenizer


def spelling_ids(tokenizer, texts: list[str]) -> set[int]:
    """Ids of the single-character pieces ("x" and "##x") for every character of the normalised texts: with
    them kept, WordPiece can still spell any word of those texts whose longer pieces were dropped."""
    normalizer = tokenizer.backend_tokenizer.normalizer
    chars = set("".join(normalizer.normalize_str(t) if normalizer else t for t in texts))
    vocab = tokenizer.get_vocab()
    return {vocab[p] for c in chars for p in (c, "##" + c) if p in vocab}


def rare_cut_ids(tokenizer, train: list[str], min_count: int, max_length: int | None = None) -> list[int]:
    """Sorted ids of the special tokens, the pieces the train texts use at least `min_count` times, and the
    single characters that spell the rest (`spelling_ids`)."""
    counts: Counter = Counter()
    encoded = tokenizer(list(train), add_special_tokens=False, truncation=max_length is not None, max_length=max_length)
    for ids in encoded["input_ids"]:
        counts.update(ids)
    kept = {i for i, n in counts.items() if n >= min_count}
    return sorted(kept | set(tokenizer.all_special_ids) | spelling_ids(tokenizer, train))


def trimmed_in_memory(model, tokenizer, keep_ids: list[int]):
    """A trimmed copy of the model and its tokenizer, nothing written (for measuring a candidate cut)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    small = copy.deepcopy(model)
    trim_embeddings(small, keep_ids)
    backend = Tokenizer.from_str(trimmed_tokenizer_json(tokenizer, keep_ids))
    return small, PreTrainedTokenizerFast(tokenizer_object=backend)


def validation_score(model, tokenizer, frame, labelling, max_length: int, pad_token: str) -> float:
    """The model's score (accuracy; a multitask model's as its labelling defines it) on a split, in 0..1."""
    from components.kit.modeling import predict_logits

    data = labelling.encode(tokenizer, frame, max_length)
    pad_id = tokenizer.convert_tokens_to_ids(pad_token)
    return float(labelling.score(predict_logits(model, data, pad_id), data.labels))


def trim(
    model_dir: Path,
    texts: list[str],
    out_dir: Path,
    max_length: int | None = None,
    keep_ids: list[int] | None = None,
) -> dict:
    """Write a trimmed copy of the model directory, keeping `keep_ids` (default: every piece `texts` use);
    returns what was kept."""
    tokenizer = fast_tokenizer(model_dir)
    keep_ids = used_token_ids(tokenizer, texts, max_length) if keep_ids is None else sorted(keep_ids)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True)
    vocab_before = model.get_input_embeddings().num_embeddings
    tokenizer_json = trimmed_tokenizer_json(tokenizer, keep_ids)
    trim_embeddings(model, keep_ids)

    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "tokenizer.json").write_text(tokenizer_json)
        remap_added_tokens(tmp / "tokenizer_config.json", keep_ids)
        tokens = wordpiece_vocab(tokenizer)
        if (tmp / "vocab.txt").exists():  # the slow tokenizer's copy of the vocabulary, kept consistent
            (tmp / "vocab.txt").write_text("".join(tokens[i] + "\n" for i in keep_ids))
        for extra in ("labels.json",):
            if (model_dir / extra).exists():
                shutil.copy(model_dir / extra, tmp / extra)
        np.save(tmp / KEPT_IDS_FILE, np.asarray(keep_ids, dtype=np.int64))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return {"vocab_before": vocab_before, "vocab_after": len(keep_ids)}


def budget_left(model_dir: Path, untrimmed_val: float) -> float | None:
    """Validation points the accuracy budget still allows below the teacher, from the prune stage's
    metrics.json (None when pruning had no budget)."""
    path = Path(model_dir) / "metrics.json"
    pruned = json.loads(path.read_text()) if path.is_file() else {}
    if pruned.get("budget_points") is None or pruned.get("teacher_val_accuracy") is None:
        return None
    return pruned["budget_points"] - 100 * (pruned["teacher_val_accuracy"] - untrimmed_val)


def choose_cut(cfg: TrimConfig, model_dir: Path, prepared: Path, max_length: int) -> tuple[list[int] | None, dict]:
    """Decide which pieces to keep: the rarest cut (largest min_count, down to 1) within the allowance, or
    None (the vocabulary kept whole) when not even the train split's every piece is. Returns the kept ids and
    the record of what was measured."""
    from components.kit.labelling import model_labelling
    from components.kit.modeling import read_split

    tokenizer = fast_tokenizer(model_dir)
    train, validation = read_split(prepared, "train"), read_split(prepared, "validation")
    record: dict = {"min_count_asked": cfg.min_count, "tried": []}
    if validation.empty:  # nothing to measure on: every piece the train texts use
        return used_token_ids(tokenizer, train["text"].tolist(), max_length), record | {"min_count": 1}
    labelling = model_labelling(model_dir, prepared)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True)
    pad = tokenizer.pad_token
    untrimmed = validation_score(model, tokenizer, validation, labelling, max_length, pad)
    left = budget_left(model_dir, untrimmed)
    allowance = cfg.max_drop_points if left is None else max(0.0, min(cfg.max_drop_points, left))
    record |= {"untrimmed_val": untrimmed, "allowance_points": allowance, "budget_left_points": left}
    for k in range(cfg.min_count, 0, -1):
        keep = rare_cut_ids(tokenizer, train["text"].tolist(), k, max_length)
        small, small_tok = trimmed_in_memory(model, tokenizer, keep)
        score = validation_score(small, small_tok, validation, labelling, max_length, pad)
        drop = 100 * (untrimmed - score)
        record["tried"].append({"min_count": k, "vocab": len(keep), "val": score, "drop_points": drop})
        print(
            f"  trim: pieces used at least {k}x in train: {len(keep):,} wordpieces, validation "
            f"{score:.4f} ({drop:+.2f} points against {untrimmed:.4f}; allowed {allowance:.2f})",
            flush=True,
        )
        if drop <= allowance:
            return keep, record | {"min_count": k}
    return None, record | {"min_count": None}


def copy_untrimmed(model_dir: Path, out_dir: Path) -> None:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(model_dir, out_dir, ignore=shutil.ignore_patterns("*_logits.npy"))


def run(
    cfg: TrimConfig, model_dir: Path, prepared: Path, out_dir: Path, tracker: Tracker, max_length: int = 64
) -> StageResult:
    """Stage trim: a trimmed copy of the pruned model (or a plain copy when disabled)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if not cfg.enabled:
        copy_untrimmed(model_dir, out_dir)
        return StageResult(metrics={"trimmed": 0.0}, outputs={"model": out_dir})
    keep_ids, record = choose_cut(cfg, model_dir, prepared, max_length)
    if keep_ids is None:
        # Words validation has and train lacks lose their own pieces in any cut: on a small train split
        # that cost more than the allowance, so the model keeps its whole vocabulary.
        copy_untrimmed(model_dir, out_dir)
        (out_dir / TRIM_FILE).write_text(json.dumps(record, indent=2))
        print("  trim: every cut lost more than allowed on validation; the vocabulary is kept whole", flush=True)
        return StageResult(metrics={"trimmed": 0.0}, outputs={"model": out_dir})
    kept = trim(model_dir, [], out_dir, max_length, keep_ids=keep_ids)
    (out_dir / TRIM_FILE).write_text(json.dumps(record | kept, indent=2))
    tracker.log_metrics(kept | {"min_count": record["min_count"]})
    print(
        f"  trim: vocabulary {kept['vocab_before']:,} -> {kept['vocab_after']:,} wordpieces "
        f"(pieces used at least {record['min_count']}x)",
        flush=True,
    )
    metrics = {k: float(v) for k, v in kept.items()} | {"trimmed": 1.0, "min_count": float(record["min_count"])}
    return StageResult(metrics=metrics, outputs={"model": out_dir})
