"""Stage, trim: keep only the wordpieces the task's data uses, shrinking the vocabulary and the embeddings.

On a 30,522-wordpiece BERT vocabulary at width 384 the embedding matrix is 11.7M parameters, most of a
small student. A sentiment corpus uses a fraction of those pieces. `trim` keeps the special tokens plus
every piece that the tokenizer produces on the given texts (the train and validation splits, never the
test split), writes a reduced WordPiece vocabulary, and slices the embedding rows to match, in the same
order, so that:

- on text whose pieces are all kept, the trimmed tokenizer and model give exactly the original outputs
  (WordPiece's greedy longest match finds the same pieces, because every piece it chose is still there);
- an unseen word is split into the kept pieces that cover it, or becomes [UNK] when none do: a defined
  result, never an error.

Only WordPiece (BERT-family) tokenizers are handled; others are reported as not trimmable. The vocabulary
helpers live in `components.kit.vocab`, beside `restore_wordpieces`, which grows a trimmed vocabulary back
when new text arrives (incremental learning).
"""

from __future__ import annotations

import shutil
import tempfile
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


def trim(model_dir: Path, texts: list[str], out_dir: Path, max_length: int | None = None) -> dict:
    """Write a trimmed copy of the model directory; returns what was kept."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not getattr(tokenizer, "is_fast", False):
        raise NotTrimmable("vocabulary trimming needs a fast tokenizer (tokenizer.json)")
    keep_ids = used_token_ids(tokenizer, texts, max_length)
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


def copy_untrimmed(model_dir: Path, out_dir: Path) -> None:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(model_dir, out_dir, ignore=shutil.ignore_patterns("*_logits.npy"))


def run(
    cfg: TrimConfig, model_dir: Path, prepared: Path, out_dir: Path, tracker: Tracker, max_length: int = 64
) -> StageResult:
    """Stage trim: a trimmed copy of the pruned model (or a plain copy when disabled)."""
    import pandas as pd

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if not cfg.enabled:
        copy_untrimmed(model_dir, out_dir)
        return StageResult(metrics={"trimmed": 0.0}, outputs={"model": out_dir})
    texts = []
    for split in ("train", "validation"):  # never the test split
        texts += pd.read_parquet(prepared / f"{split}.parquet")["text"].tolist()
    kept = trim(model_dir, texts, out_dir, max_length)
    tracker.log_metrics(kept)
    print(f"  trim: vocabulary {kept['vocab_before']:,} -> {kept['vocab_after']:,} wordpieces", flush=True)
    return StageResult(metrics={k: float(v) for k, v in kept.items()} | {"trimmed": 1.0}, outputs={"model": out_dir})
