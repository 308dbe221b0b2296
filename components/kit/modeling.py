"""Model helpers shared by the training stages: load models (where a model comes from: `components.kit.sources`),
read and tokenize the prepared splits, batch, predict, save a classifier folder (`save_model`: weights, tokenizer,
labels.json, metrics.json).

Sentences are tokenized once and batched by length (`length_bucketed_batches`), so a batch pads only to
its own longest sentence: on short review snippets this roughly halves the cost of an epoch against
padding everything to `max_length`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import nn

from components.config import SPLITS
from components.kit.distributed import is_main_process, wait_for_everyone
from components.kit.sources import ModelSourceError

if TYPE_CHECKING:
    from components.kit.labelling import Labelling


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


@dataclass
class Encoded:
    """A tokenized split: one list of token ids per sentence, plus integer labels."""

    input_ids: list[list[int]]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)


def concat(a: Encoded, b: Encoded) -> Encoded:
    return Encoded(a.input_ids + b.input_ids, np.concatenate([a.labels, b.labels]))


def read_split(prepared: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(prepared / f"{name}.parquet")


def encode(tokenizer, texts: list[str], labels: list[str] | None, label_names: list[str], max_length: int) -> Encoded:
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    index = {name: i for i, name in enumerate(label_names)}
    y = np.array([index[label] for label in labels] if labels is not None else [-1] * len(ids), dtype=np.int64)
    return Encoded(ids, y)


def read_labels(prepared: Path) -> list[str]:
    return json.loads((prepared / "data_card.json").read_text())["labels"]


def encode_split(prepared: Path, name: str, tokenizer, labelling: Labelling, max_length: int) -> Encoded:
    """One prepared split tokenized, its labels encoded as `labelling` says (`components.kit.labelling`)."""
    return labelling.encode(tokenizer, read_split(prepared, name), max_length)


def load_encoded_splits(prepared: Path, tokenizer, labelling: Labelling, max_length: int, names=SPLITS):
    return {name: encode_split(prepared, name, tokenizer, labelling, max_length) for name in names}


def load_transfer(prepared: Path, tokenizer, labelling: Labelling, max_length: int):
    """The unlabelled transfer set as an Encoded split (every label UNLABELLED), or None when there is none."""
    if not (prepared / "transfer.parquet").exists():
        return None
    return encode_split(prepared, "transfer", tokenizer, labelling, max_length)


def save_model(model, tokenizer, labels: list[str], out_dir: Path, extra: dict) -> None:
    """Rank 0 writes the model folder (every process holds the same weights); all processes wait for it."""
    if is_main_process():
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
        (out_dir / "labels.json").write_text(json.dumps(labels))
        (out_dir / "metrics.json").write_text(json.dumps(extra, indent=2))
    wait_for_everyone()


def length_bucketed_batches(
    lengths: list[int],
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    pool: int = 50,
    draw: np.ndarray | None = None,
    draws: int | None = None,
) -> list[np.ndarray]:
    """Indices grouped into batches of similar length.

    With shuffle, sentences are shuffled, cut into pools of `pool` batches, sorted by length inside a
    pool and batched; the batch order is shuffled again. Without shuffle, batches follow length order.
    `draw` (with shuffle): each row's probability; `draws` rows (default: as many as there are) are drawn
    by it, with replacement, instead of every row once.
    """
    order = np.arange(len(lengths))
    lengths_arr = np.asarray(lengths)
    if not shuffle:
        order = order[np.argsort(lengths_arr, kind="stable")]
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng = np.random.default_rng(seed)
    if draw is not None:
        order = rng.choice(order, size=len(order) if draws is None else draws, replace=True, p=draw)
    else:
        order = rng.permutation(order)
    batches = []
    span = batch_size * pool
    for start in range(0, len(order), span):
        chunk = order[start : start + span]
        chunk = chunk[np.argsort(lengths_arr[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def pad_rows(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Token id rows right-padded to the longest: input_ids and attention_mask (long tensors), so real tokens
    keep positions 0..n-1."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def collate(input_ids: list[list[int]], index: np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
    """The rows at `index`, padded (`pad_rows`), with all-zero token_type_ids."""
    batch = pad_rows([input_ids[i] for i in index], pad_id)
    return batch | {"token_type_ids": torch.zeros_like(batch["input_ids"])}


def model_inputs(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop token_type_ids for architectures that do not take them (DistilBERT, RoBERTa...)."""
    if getattr(model.config, "type_vocab_size", 0) > 0:
        return batch
    return {k: v for k, v in batch.items() if k != "token_type_ids"}


@torch.inference_mode()
def predict_logits(model: nn.Module, data: Encoded, pad_id: int, batch_size: int = 64) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device  # the CPU, or the GPU a training loop placed the model on
    out = np.zeros((len(data), model.config.num_labels), dtype=np.float32)
    for index in length_bucketed_batches([len(x) for x in data.input_ids], batch_size, shuffle=False):
        batch = model_inputs(model, collate(data.input_ids, index, pad_id))
        out[index] = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu().numpy()
    return out


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(-1) == labels).mean()) if len(labels) else 0.0


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def dir_size_bytes(path: Path, suffixes: tuple[str, ...] = (".safetensors", ".onnx", ".bin", ".onnx_data")) -> int:
    """Bytes of the weight files in a model directory (tokenizer and configs excluded)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and f.suffix in suffixes)


def transformer_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks of an encoder (BERT, RoBERTa, DistilBERT, ...)."""
    base = getattr(model, model.base_model_prefix, model)
    for path in ("encoder.layer", "transformer.layer", "layers", "h"):
        node = base
        for part in path.split("."):
            node = getattr(node, part, None)
            if node is None:
                break
        if isinstance(node, nn.ModuleList):
            return node
    raise ModelSourceError(f"cannot find the transformer layers of {type(model).__name__}")


def set_transformer_layers(model: nn.Module, layers: nn.ModuleList) -> None:
    base = getattr(model, model.base_model_prefix, model)
    for path in ("encoder", "transformer"):
        holder = getattr(base, path, None)
        if holder is not None and isinstance(getattr(holder, "layer", None), nn.ModuleList):
            holder.layer = layers
            return
    raise ModelSourceError(f"cannot replace the transformer layers of {type(model).__name__}")
