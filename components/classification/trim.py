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

Only WordPiece (BERT-family) tokenizers are handled; others are reported as not trimmable.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from components.config import TrimConfig
from components.kit.tracking import StageResult, Tracker


class NotTrimmable(ValueError):
    """The tokenizer is not a WordPiece vocabulary this module knows how to trim."""


def used_token_ids(tokenizer, texts: list[str], max_length: int | None = None) -> list[int]:
    """Sorted ids of the special tokens plus every piece the tokenizer emits on `texts`."""
    used = set(tokenizer.all_special_ids)
    encoded = tokenizer(
        list(texts), add_special_tokens=False, truncation=max_length is not None, max_length=max_length
    )["input_ids"]
    for ids in encoded:
        used.update(ids)
    return sorted(used)


def wordpiece_vocab(tokenizer) -> list[str]:
    """The vocabulary as a list indexed by id."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    if state["model"]["type"] != "WordPiece":
        raise NotTrimmable(f"vocabulary trimming handles WordPiece tokenizers, not {state['model']['type']}")
    vocab = state["model"]["vocab"]
    tokens = [""] * len(vocab)
    for token, index in vocab.items():
        tokens[index] = token
    return tokens


def trimmed_tokenizer_json(tokenizer, keep_ids: list[int]) -> str:
    """tokenizer.json with the WordPiece vocab reduced to `keep_ids` (renumbered in order) and the
    post-processor's special-token ids remapped."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    tokens = wordpiece_vocab(tokenizer)
    new_id = {old: new for new, old in enumerate(keep_ids)}
    state["model"]["vocab"] = {tokens[old]: new for old, new in new_id.items()}
    for added in state.get("added_tokens", []):
        added["id"] = new_id[added["id"]]
    post = state.get("post_processor") or {}
    for spec in (post.get("special_tokens") or {}).values():
        spec["ids"] = [new_id[i] for i in spec["ids"]]
    for key in ("cls", "sep"):  # BertProcessing stores [token, id] pairs
        if key in post:
            post[key] = [post[key][0], new_id[post[key][1]]]
    if state["model"].get("unk_token") not in state["model"]["vocab"]:
        raise NotTrimmable("the unknown token must be kept")
    return json.dumps(state, ensure_ascii=False)


def remap_added_tokens(config_path: Path, keep_ids: list[int]) -> None:
    """tokenizer_config.json names special tokens by id too; renumber them like tokenizer.json."""
    if not config_path.exists():
        return
    config = json.loads(config_path.read_text())
    new_id = {old: new for new, old in enumerate(keep_ids)}
    decoder = config.get("added_tokens_decoder") or {}
    config["added_tokens_decoder"] = {str(new_id[int(k)]): v for k, v in decoder.items() if int(k) in new_id}
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False))


def trim_embeddings(model, keep_ids: list[int]) -> None:
    """Keep the rows `keep_ids` of the input embedding matrix, in that order."""
    old = model.get_input_embeddings()
    index = torch.as_tensor(keep_ids, dtype=torch.long)
    new = torch.nn.Embedding(len(keep_ids), old.embedding_dim, padding_idx=None)
    new.weight.data = old.weight.data[index].clone()
    model.set_input_embeddings(new)
    model.config.vocab_size = len(keep_ids)
    pad = model.config.pad_token_id
    if pad is not None:
        model.config.pad_token_id = keep_ids.index(pad) if pad in keep_ids else None


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
        np.save(tmp / "kept_token_ids.npy", np.asarray(keep_ids, dtype=np.int64))
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
