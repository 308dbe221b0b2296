"""Predict with a miniaturize edge bundle: needs only onnxruntime, tokenizers and numpy.

This file is copied into every bundle as `predict.py` (by `miniaturize package`):

    python predict.py "a moving, funny film"        # label and scores as JSON
    python predict.py --jsonl texts.jsonl           # one {"text": ...} (or a JSON string) per line

Before loading anything it checks the bundle: the folder must hold exactly a classification bundle's files
(model.onnx, tokenizer.json, labels.json, predict.py and manifest.json), the manifest must list exactly
those, and each must have the sha256 the manifest records. `--expect-manifest SHA256` also pins
manifest.json itself (the sha256 `miniaturize package` prints, or the registered version's
`bundle.manifest_sha256` tag), so a manifest rewritten together with a swapped file is refused too. Any
failure stops it with exit code 2 and the reason, never a prediction from a model that is not the one
pinned. Threads: `--threads` (default 2).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
KIND = "classification"
# Every file of a classification bundle besides manifest.json: the folder must hold exactly these, and the
# manifest list exactly these, so that no file a prediction reads escapes the hash check.
BUNDLE_FILES = ("model.onnx", "tokenizer.json", "labels.json", "predict.py")
OPTIONAL_FILES: tuple[str, ...] = ()
IGNORED = ("__pycache__",)  # Python may write it beside the script


class BundleError(RuntimeError):
    """The bundle is incomplete or does not match its manifest."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
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
    allowed = set(BUNDLE_FILES) | set(OPTIONAL_FILES)
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
        actual, wanted = hashlib.sha256(raw).hexdigest(), expect_manifest.strip().lower()
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

    def scores(self, texts: list[str]):
        import numpy as np

        encoded = self.tokenizer.encode_batch(list(texts))
        feed = {
            "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encoded], dtype=np.int64),
        }
        logits = self.session.run(None, {k: v for k, v in feed.items() if k in self.inputs})[0]
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)

    def predict(self, texts: list[str]) -> list[dict]:
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
