"""The teacher's soft outputs (its logits) on the train and transfer sets: computed once, reused everywhere.

Distillation, pruning recovery, the seeds stage and every search candidate learn from the teacher's
logits; none of them runs the teacher per epoch. The finetune stage computes them right after training
and stores them in the teacher's folder:

    models/teacher/soft_targets/<key>/logits.npy    (rows, labels) float32
    models/teacher/soft_targets/<key>/inputs.json   what the key hashes

The key hashes what the logits depend on: the teacher's files (weights, config, tokenizer, labels), the
sha256 of the split's data file, the split's name and the token limit the sentences are cut to. A
retrained teacher or a changed data file gives another key, so a stale file is never read. A reader that
asks for a key the teacher's folder lacks (another `max_length`, say) computes it once into its cache
folder (`.miniaturize/soft_targets/` in a project, beside the stage cache): the teacher's folder is a
DVC output and a stage-cache input, and stays as the finetune stage wrote it.

    logits = soft_targets.load(teacher_dir, prepared, "train", encoded_train, max_length=64, cache=folder)

`student_data` gives the distill and prune stages what they train on: the encoded splits, the train split
(plus the transfer set) and these logits on it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.config import DistillConfig, DistributedConfig, PruneConfig, section_hash
from components.kit.distributed import is_main_process, process_state, resolve_device, wait_for_everyone, world_size
from components.kit.hashing import file_sha256
from components.kit.labelling import Labelling, labelling_of
from components.kit.modeling import Encoded, concat, load_encoded_splits, load_transfer, predict_logits

FOLDER = "soft_targets"  # inside the teacher's folder
# Files of the teacher folder that do not change its outputs (run metrics) or are outputs themselves.
NOT_THE_TEACHER = ("metrics.json",)


def teacher_sha256(teacher_dir: Path) -> str:
    """sha256 of the teacher folder's own files (weights, config, tokenizer, labels), not its soft targets."""
    digest = hashlib.sha256()
    for item in sorted(
        p for p in Path(teacher_dir).iterdir() if p.is_file() and p.name not in NOT_THE_TEACHER and p.suffix != ".npy"
    ):
        digest.update(f"{item.name}\0{file_sha256(item)}\n".encode())
    return digest.hexdigest()


def key_inputs(teacher_dir: Path, prepared: Path, split: str, max_length: int) -> dict:
    return {
        "teacher_sha256": teacher_sha256(teacher_dir),
        "data_sha256": file_sha256(Path(prepared) / f"{split}.parquet"),
        "split": split,
        "max_length": max_length,
    }


def find(folders: list[Path], key: str, rows: int) -> np.ndarray | None:
    """The stored logits under `key` in the first folder that has them with the expected row count."""
    for folder in folders:
        path = Path(folder) / key / "logits.npy"
        if path.is_file():
            logits = np.load(path)
            if logits.shape[0] == rows:
                return logits
    return None


def store(folder: Path, key: str, inputs: dict, logits: np.ndarray) -> None:
    """Rank 0 writes (a finished file appears whole, under its final name); every process waits for it."""
    if is_main_process():
        out = Path(folder) / key
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "logits.tmp.npy", logits.astype(np.float32))
        (out / "logits.tmp.npy").replace(out / "logits.npy")
        (out / "inputs.json").write_text(json.dumps(inputs | {"rows": int(logits.shape[0])}, indent=2))
    wait_for_everyone()


def teacher_logits(model, data: Encoded, pad_id: int, dist: DistributedConfig) -> np.ndarray:
    """One pass of the teacher over `data`, on the training device (the GPU when there is one)."""
    home = next(model.parameters()).device
    logits = predict_logits(model.to(resolve_device(dist.device)), data, pad_id)
    model.to(home)
    return logits


def save_for(
    model,
    teacher_dir: Path,
    prepared: Path,
    split: str,
    data: Encoded,
    pad_id: int,
    max_length: int,
    dist: DistributedConfig | None = None,
) -> str:
    """The finetune stage: the fine-tuned teacher's logits on `split`, stored in its folder; returns the key.
    Call after the teacher's files are saved (they are part of the key)."""
    inputs = key_inputs(teacher_dir, prepared, split, max_length)
    key = section_hash(inputs)
    logits = teacher_logits(model, data, pad_id, dist or DistributedConfig()) if is_main_process() else None
    store(Path(teacher_dir) / FOLDER, key, inputs, logits)
    return key


def load(
    teacher_dir: Path,
    prepared: Path,
    split: str,
    data: Encoded,
    max_length: int,
    cache: Path | None = None,
    dist: DistributedConfig | None = None,
) -> np.ndarray:
    """The teacher's logits on `split` (as `data`, its sentences cut to `max_length` tokens): from the
    teacher's folder or `cache`, else computed once by rank 0 and stored in `cache` (the teacher's folder
    when no cache is given)."""
    inputs = key_inputs(teacher_dir, prepared, split, max_length)
    key = section_hash(inputs)
    folders = [Path(teacher_dir) / FOLDER] + ([Path(cache)] if cache else [])
    found = find(folders, key, len(data))
    if found is not None:
        return found
    dist = dist or DistributedConfig()
    if world_size() > 1:
        process_state(dist)  # joins the process group: the others wait for rank 0 at the barrier in store()
    print(f"  soft targets: computing the teacher's logits on {split} ({len(data)} sentences, key {key})", flush=True)
    logits = None
    if is_main_process():
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir, use_safetensors=True)
        logits = teacher_logits(teacher, data, AutoTokenizer.from_pretrained(teacher_dir).pad_token_id, dist)
    store(folders[-1], key, inputs, logits)
    return find(folders[-1:], key, len(data))


@dataclass(frozen=True)
class StudentData:
    """What the distill and prune stages train a student on: the tokenizer, the labelling, the encoded
    splits, the training rows (the train split first, then the transfer set when used) and the teacher's
    logits on those rows, in the same order."""

    tokenizer: object
    labels: Labelling
    splits: dict[str, Encoded]
    train_set: Encoded
    teacher_logits: np.ndarray

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def train_logits(self) -> np.ndarray:
        """The teacher's logits on the train split alone: its rows come first in `train_set`."""
        return self.teacher_logits[: len(self.splits["train"])]

    @property
    def transfer_rows(self) -> int:
        return len(self.train_set) - len(self.splits["train"])


def student_data(
    cfg: DistillConfig | PruneConfig,
    tokenizer_dir: Path,
    teacher_dir: Path,
    prepared: Path,
    soft_cache: Path | None,
    dist: DistributedConfig | None,
) -> StudentData:
    """The splits of `prepared`, cut to `cfg.max_length` tokens by the tokenizer of `tokenizer_dir`, and the
    train split, plus the unlabelled transfer set when `cfg.transfer` asks for it and the data has one, with
    the teacher's logits on them: stored once by the finetune stage, or computed once into `soft_cache`."""
    from transformers import AutoTokenizer

    labels = labelling_of(prepared)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    splits = load_encoded_splits(prepared, tokenizer, labels, cfg.max_length)
    train_set = splits["train"]
    logits = load(teacher_dir, prepared, "train", train_set, cfg.max_length, soft_cache, dist)
    transfer = load_transfer(prepared, tokenizer, labels, cfg.max_length) if cfg.transfer else None
    if transfer is not None:
        transfer_logits = load(teacher_dir, prepared, "transfer", transfer, cfg.max_length, soft_cache, dist)
        train_set, logits = concat(train_set, transfer), np.concatenate([logits, transfer_logits])
    return StudentData(tokenizer, labels, splits, train_set, logits)
