"""WordPiece vocabulary surgery: shrink a model's vocabulary to the pieces its data uses, or grow it back.

The trim stage (`components.classification.trim`) keeps the special tokens plus every piece the tokenizer
emits on the task's texts (`used_token_ids`), writes the reduced vocabulary into tokenizer.json
(`trimmed_tokenizer_json`, `remap_added_tokens`) and slices the embedding rows to match (`trim_embeddings`).
It records the mapping in `kept_token_ids.npy`: student id i is original id kept_token_ids[i].

Incremental learning needs the reverse. A new batch of text uses words the trimmed student never saw, which
it can only read as [UNK] or as scraps of the pieces it kept. `restore_wordpieces` finds the pieces the
full-vocabulary teacher emits on the new texts that the student lacks, appends them at the END of the
student's vocabulary with the teacher's embedding rows, and writes the grown student folder. Existing ids
keep their numbers, so the student's weights and its outputs on old text are untouched; on the new texts
it splits words into exactly the teacher's pieces (WordPiece's greedy longest match over a subset of the
teacher's vocabulary that holds every piece the teacher chose finds those same pieces).

Only WordPiece (BERT-family) tokenizers are handled; others raise `NotTrimmable`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from components.kit.files import move_into_place, temp_sibling

KEPT_IDS_FILE = "kept_token_ids.npy"
# Weight files a model folder may hold; removed from the copy before the grown model is saved, so no stale
# shard or index from the old folder sits beside the new weights.
WEIGHT_PATTERNS = ("model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin")


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


# ---------------------------------------------------------------- growing a trimmed vocabulary back


def appended_tokenizer_json(tokenizer, pieces: list[str]) -> str:
    """tokenizer.json with `pieces` added to the WordPiece vocab after its last id. Nothing else refers to
    the new ids, and the old ids keep their numbers, so the special tokens need no remapping."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = state["model"]["vocab"]
    start = len(vocab)
    for offset, piece in enumerate(pieces):
        vocab[piece] = start + offset
    return json.dumps(state, ensure_ascii=False)


def append_embeddings(model, rows: torch.Tensor) -> None:
    """Append `rows` (n x width) to the input embedding matrix; the existing rows are kept as they are."""
    old = model.get_input_embeddings()
    if rows.shape[1] != old.embedding_dim:
        raise ValueError(f"embedding width {rows.shape[1]} does not match the student's {old.embedding_dim}")
    weight = torch.cat([old.weight.data, rows.to(old.weight.dtype)], dim=0)
    new = torch.nn.Embedding(weight.shape[0], old.embedding_dim, padding_idx=None)  # as trim_embeddings
    new.weight.data = weight.clone()
    model.set_input_embeddings(new)
    model.config.vocab_size = weight.shape[0]


def restore_wordpieces(
    student_dir: Path, teacher_dir: Path, texts: list[str], out_dir: Path, max_length: int | None = None
) -> dict:
    """Write a copy of the student folder whose vocabulary also holds every piece the teacher's tokenizer
    emits on `texts`; returns {"added", "vocab_before", "vocab_after", "added_pieces" (the first 20)}.

    A student without kept_token_ids.npy was never trimmed (it has the teacher's whole vocabulary): it is
    copied unchanged and 0 pieces are added.
    """
    student_dir, teacher_dir, out_dir = Path(student_dir), Path(teacher_dir), Path(out_dir)
    if not (student_dir / KEPT_IDS_FILE).exists():
        vocab = AutoConfig.from_pretrained(student_dir).vocab_size
        _write_folder(student_dir, out_dir, lambda tmp: None)
        return {"added": 0, "vocab_before": vocab, "vocab_after": vocab, "added_pieces": []}

    kept = np.load(student_dir / KEPT_IDS_FILE).astype(np.int64)
    student_tokenizer = AutoTokenizer.from_pretrained(student_dir)
    teacher_tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    student_tokens, teacher_tokens = wordpiece_vocab(student_tokenizer), wordpiece_vocab(teacher_tokenizer)
    _check_trimmed_from(student_tokens, teacher_tokens, kept)

    kept_set = set(kept.tolist())
    missing = [i for i in used_token_ids(teacher_tokenizer, texts, max_length) if i not in kept_set]
    pieces = [teacher_tokens[i] for i in missing]

    student = AutoModelForSequenceClassification.from_pretrained(student_dir, use_safetensors=True)
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir, use_safetensors=True)
    vocab_before = student.get_input_embeddings().num_embeddings
    if vocab_before != len(student_tokens):
        raise ValueError(f"the student has {vocab_before} embedding rows for {len(student_tokens)} wordpieces")
    rows = teacher.get_input_embeddings().weight.data[torch.as_tensor(missing, dtype=torch.long)]
    append_embeddings(student, rows)
    tokenizer_json = appended_tokenizer_json(student_tokenizer, pieces)

    def grow(tmp: Path) -> None:
        for pattern in WEIGHT_PATTERNS:
            for stale in tmp.glob(pattern):
                stale.unlink()
        student.save_pretrained(tmp, safe_serialization=True)
        (tmp / "tokenizer.json").write_text(tokenizer_json)
        if (tmp / "vocab.txt").exists():  # the slow tokenizer's copy of the vocabulary, kept consistent
            (tmp / "vocab.txt").write_text("".join(token + "\n" for token in student_tokens + pieces))
        np.save(tmp / KEPT_IDS_FILE, np.concatenate([kept, np.asarray(missing, dtype=np.int64)]))

    _write_folder(student_dir, out_dir, grow)
    return {
        "added": len(pieces),
        "vocab_before": vocab_before,
        "vocab_after": vocab_before + len(pieces),
        "added_pieces": pieces[:20],
    }


def _check_trimmed_from(student_tokens: list[str], teacher_tokens: list[str], kept: np.ndarray) -> None:
    """The student's vocabulary must be the teacher's pieces at `kept`: otherwise the ids the teacher's
    tokenizer emits say nothing about which pieces the student lacks."""
    if len(kept) != len(student_tokens) or (len(kept) and int(kept.max()) >= len(teacher_tokens)):
        raise ValueError("kept_token_ids.npy does not match the student's vocabulary and the teacher's")
    for student_id, original_id in enumerate(kept.tolist()):
        if student_tokens[student_id] != teacher_tokens[original_id]:
            raise ValueError(
                f"the student was not trimmed from the teacher's vocabulary: student id {student_id} is "
                f"{student_tokens[student_id]!r}, the teacher's id {original_id} is {teacher_tokens[original_id]!r}"
            )


def _write_folder(source: Path, out_dir: Path, change) -> None:
    """Copy `source` (every file: labels.json, metrics.json, ...) into a temporary sibling of out_dir, call
    change(tmp) on it, then rename it into place, so a reader never sees half a folder."""
    tmp = temp_sibling(out_dir)
    try:
        shutil.copytree(source, tmp)
        change(tmp)
        move_into_place(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
