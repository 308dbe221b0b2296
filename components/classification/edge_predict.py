"""Predict with a miniaturize edge bundle: needs only onnxruntime, tokenizers and numpy.

This file is copied into every classification and multitask bundle as `predict.py` (by `miniaturize package`):

    python predict.py "a moving, funny film"        # {"text": ..., "label": ..., "scores": {label: p}}
    python predict.py --jsonl texts.jsonl           # one {"text": ...} (or a JSON string) per line

Before loading anything it checks the bundle: the folder must hold exactly a classification bundle's files
(model.onnx, tokenizer.json, labels.json, predict.py and manifest.json, and a registered version's README.md,
its model card; a multitask bundle holds the same),
the manifest must list exactly those, and each must have the sha256 the manifest records.
`--expect-manifest SHA256` also pins manifest.json itself (the sha256 `miniaturize package` prints, or the
registered version's `bundle.manifest_sha256` tag), so a manifest rewritten together with a swapped file is
refused too. Any failure stops it with exit code 2 and the reason, never a prediction from a model that is
not the one pinned. Threads: `--threads` (default 2).

A multitask bundle (manifest.json's `task` is "multitask") answers every task in one call:
{"text": ..., "tasks": {task: {"label": ..., "scores": {label: p}}, ...}}, each task's scores a softmax over
its own labels. Its model has one output per task, `logits_<task>`, and labels.json names each logit
`task:label` in output order: the tasks are read from the outputs, and a labels.json or a manifest `task`
that does not agree with them is refused (exit code 2) before anything is predicted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

try:  # CPython's own SHA-256: hashlib loads OpenSSL's libcrypto, 3.5 MB more resident memory on a device
    from _sha256 import sha256 as new_sha256  # Python 3.11
except ImportError:
    try:
        from _sha2 import sha256 as new_sha256  # Python 3.12 and later
    except ImportError:
        from hashlib import sha256 as new_sha256

HERE = Path(__file__).resolve().parent
KIND = "classification"
MULTITASK = "multitask"  # the manifest's `task` of a bundle whose model has one output per task
TASK_LOGITS_PREFIX = "logits_"  # a multitask model's outputs: logits_<task>, in task order
# Every file of a classification bundle besides manifest.json: the folder must hold exactly these, and the
# manifest list exactly these, so that no file a prediction reads escapes the hash check.
BUNDLE_FILES = ("model.onnx", "tokenizer.json", "labels.json", "predict.py")
# The model's weights beside model.onnx (ONNX external data, written by `miniaturize package`): ONNX Runtime
# maps that file into memory instead of holding the parsed model and its weights at once (docs/operations.md).
WEIGHTS_FILE = "model.onnx.data"
OPTIONAL_FILES: tuple[str, ...] = (WEIGHTS_FILE,)
MODEL_CARD = "README.md"  # a registered version's model card, listed and hashed like the rest
IGNORED = ("__pycache__",)  # Python may write it beside the script


class BundleError(RuntimeError):
    """The bundle is incomplete or does not match its manifest."""


def sha256(path: Path) -> str:
    digest = new_sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_set_problem(listed: set[str], present: set[str]) -> str | None:
    """Why the files the manifest lists (`listed`) and those in the folder (`present`, less manifest.json and
    what is IGNORED) are not exactly this kind of bundle's set, or None when they are."""
    odd = sorted(name for name in listed if ".." in name or "/" in name or "\\" in name)
    if odd:
        return f"manifest.json lists {', '.join(odd)}: a bundle's file names hold no '..' and no path separator"
    allowed = set(BUNDLE_FILES) | set(OPTIONAL_FILES) | {MODEL_CARD}
    unlisted_required = sorted(set(BUNDLE_FILES) - listed)
    if unlisted_required:
        return f"manifest.json does not list {', '.join(unlisted_required)}: not a complete {KIND} bundle"
    foreign = sorted(listed - allowed)
    if foreign:
        return f"manifest.json lists {', '.join(foreign)}, which a {KIND} bundle does not hold"
    missing = sorted(listed - present)
    if missing:
        return f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing from the bundle"
    extra = sorted(present - listed)
    if extra:
        return (
            f"{', '.join(extra)} {'is' if len(extra) == 1 else 'are'} in the bundle folder but not in "
            f"manifest.json: a bundle holds only its listed files"
        )
    return None


def verify(bundle: Path, expect_manifest: str | None = None) -> dict:
    """The manifest, after checking that the folder holds exactly this kind of bundle's files, each with the
    sha256 manifest.json records, and (when `expect_manifest` is given) that manifest.json has that sha256."""
    manifest_path = bundle / "manifest.json"
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path} is missing: not a miniaturize bundle")
    raw = manifest_path.read_bytes()  # hashed and parsed from the same bytes
    if expect_manifest is not None:
        actual, wanted = new_sha256(raw).hexdigest(), expect_manifest.strip().lower()
        if actual != wanted:
            raise BundleError(
                f"manifest.json has sha256 {actual}, not the expected {wanted}: this is not the bundle that was pinned"
            )
    manifest = json.loads(raw)
    listed = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(listed, dict):
        raise BundleError('manifest.json has no "files" table: not a miniaturize bundle')
    present = {path.name for path in bundle.iterdir()} - {"manifest.json", *IGNORED}
    problem = file_set_problem(set(listed), present)
    if problem:
        raise BundleError(problem)
    for name, expected in listed.items():
        path = bundle / name
        if not path.is_file():
            raise BundleError(f"{name} is not a file")
        if sha256(path) != expected:
            raise BundleError(f"{name} does not match manifest.json (sha256 differs): the bundle was changed")
    return manifest


def output_tasks(outputs: list[str], widths: list, labels: list[str]) -> dict[str, list[str]] | None:
    """{task: its labels} of a model with one output per task (`outputs`, `logits_<task>`, in graph order, each
    `widths` wide when its shape is fixed), from labels.json's `task:label` names; None for a model with one
    `logits` output. BundleError when labels.json does not name exactly these outputs' logits, in order."""
    if "logits" in outputs or not any(name.startswith(TASK_LOGITS_PREFIX) for name in outputs):
        return None
    per_task = [(name, width) for name, width in zip(outputs, widths) if name.startswith(TASK_LOGITS_PREFIX)]
    tasks = {}
    for name, width in per_task:
        task = name[len(TASK_LOGITS_PREFIX) :]
        tasks[task] = [label[len(task) + 1 :] for label in labels if label.startswith(f"{task}:")]
        if not tasks[task] or (isinstance(width, int) and width != len(tasks[task])):
            raise BundleError(
                f"model.onnx has output {name} ({width} logits) but labels.json names {len(tasks[task])} "
                f"labels {task}:...: the bundle's model and labels do not belong together"
            )
    if [f"{task}:{label}" for task, names in tasks.items() for label in names] != labels:
        raise BundleError(
            f"labels.json does not name the logits of model.onnx's outputs ({', '.join(n for n, _ in per_task)}) "
            f"in order, as task:label"
        )
    return tasks


class Predictor:
    def __init__(self, bundle: Path = HERE, threads: int = 2, expect_manifest: str | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.manifest = verify(bundle, expect_manifest)
        self.labels = json.loads((bundle / "labels.json").read_text())
        self.max_length = int(self.manifest.get("max_length", 64))
        self.tokenizer = Tokenizer.from_file(str(bundle / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.max_length)
        pad_id = self.tokenizer.token_to_id(self.manifest.get("pad_token", "[PAD]")) or 0
        self.tokenizer.enable_padding(pad_id=pad_id, pad_token=self.manifest.get("pad_token", "[PAD]"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(bundle / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}
        declared = self.session.get_outputs()
        # {task: its labels} of a multitask model, read from its outputs; None for a classifier's one output
        self.tasks = output_tasks([o.name for o in declared], [o.shape[-1] for o in declared], self.labels)
        self.outputs = [f"{TASK_LOGITS_PREFIX}{t}" for t in self.tasks] if self.tasks else [declared[0].name]
        task = self.manifest.get("task", KIND)
        if task != (MULTITASK if self.tasks else KIND):
            has = f"one output per task ({', '.join(self.outputs)})" if self.tasks else "one logits output"
            raise BundleError(f"manifest.json says task {task!r} but model.onnx has {has}")

    def scores(self, texts: list[str]):
        """Probabilities (rows, labels.json's logits): a softmax over all labels, or over each task's own block
        for a multitask model."""
        import numpy as np

        encoded = self.tokenizer.encode_batch(list(texts))
        feed = {
            "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encoded], dtype=np.int64),
        }
        blocks = self.session.run(self.outputs, {k: v for k, v in feed.items() if k in self.inputs})
        return np.concatenate([softmax(logits) for logits in blocks], axis=-1)

    def predict(self, texts: list[str]) -> list[dict]:
        if self.tasks:
            return [{"text": text, "tasks": self.by_task(probs)} for text, probs in zip(texts, self.scores(texts))]
        out = []
        for text, probs in zip(texts, self.scores(texts)):
            best = int(probs.argmax())
            out.append(
                {
                    "text": text,
                    "label": self.labels[best],
                    "scores": {label: round(float(p), 6) for label, p in zip(self.labels, probs)},
                }
            )
        return out

    def by_task(self, probs) -> dict[str, dict]:
        """{task: {"label", "scores"}} of one row of a multitask model's `scores`."""
        out, start = {}, 0
        for task, labels in self.tasks.items():
            block = probs[start : start + len(labels)]
            start += len(labels)
            out[task] = {
                "label": labels[int(block.argmax())],
                "scores": {label: round(float(p), 6) for label, p in zip(labels, block)},
            }
        return out


def softmax(logits):
    import numpy as np

    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def read_jsonl(path: Path) -> list[str]:
    texts = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise BundleError(f"{path}:{number}: not JSON ({err.msg})") from None
        text = item.get("text") if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise BundleError(f'{path}:{number}: expected a JSON string or an object with a "text" string')
        texts.append(text)
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Predict with a miniaturize edge bundle.")
    parser.add_argument("text", nargs="*", help="text(s) to classify")
    parser.add_argument("--jsonl", type=Path, help='file with one JSON string or {"text": ...} per line')
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--expect-manifest",
        metavar="SHA256",
        help="refuse the bundle unless manifest.json has this sha256 (printed by miniaturize package)",
    )
    args = parser.parse_args(argv)
    try:
        texts = list(args.text) + (read_jsonl(args.jsonl) if args.jsonl else [])
        if not texts:
            parser.error("give a text or --jsonl FILE")
        predictor = Predictor(HERE, args.threads, args.expect_manifest)
        for start in range(0, len(texts), args.batch_size):
            for row in predictor.predict(texts[start : start + args.batch_size]):
                print(json.dumps(row))
    except (BundleError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
