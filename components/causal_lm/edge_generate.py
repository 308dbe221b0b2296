"""Generate text with a miniaturize causal-LM edge bundle: needs only onnxruntime, tokenizers and numpy.

This file is copied into every causal-LM bundle as `predict.py` (by `miniaturize package`):

    python predict.py "the film was"                       # streams a greedy continuation, token by token
    python predict.py "the film was" --max-new-tokens 64   # default 32; --threads (default 2)
    python predict.py --jsonl prompts.jsonl                # one {"prompt": ...} (or a JSON string) per line;
                                                           # prints one {"prompt", "continuation"} per line

Before loading anything it checks the bundle: the folder must hold exactly a causal-LM bundle's files
(model.onnx, tokenizer.json, config.json, predict.py, manifest.json, an optional
generation_config.json and a registered version's README.md, its model card), the manifest must list exactly those, and each must have the sha256 the manifest
records. `--expect-manifest SHA256` also pins manifest.json itself (the sha256 `miniaturize package`
prints, or the registered version's `bundle.manifest_sha256` tag). Any failure stops it with exit code 2
and the reason.

The model is an Optimum `text-generation-with-past` export (one decoder that takes and returns the
key/value cache): the prompt goes in once with an empty cache, then one token per step with the cache fed
back. Decoding is greedy and stops at the end-of-text token, after `--max-new-tokens` tokens, or at the
model's last position.
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
KIND = "causal-lm"
# Every file of a causal-LM bundle besides manifest.json: the folder must hold exactly these (the optional
# one may be absent), and the manifest list exactly these, so that no file generation reads escapes the check.
BUNDLE_FILES = ("model.onnx", "tokenizer.json", "config.json", "predict.py")
OPTIONAL_FILES = ("generation_config.json",)
MODEL_CARD = "README.md"  # a registered version's model card, listed and hashed like the rest
IGNORED = ("__pycache__",)  # Python may write it beside the script
ONNX_FLOATS = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64"}


# sha256, file_set_problem, BundleError and verify are the same as in edge_predict.py (each bundle script
# stands alone; a test checks that the copies agree). Only KIND, BUNDLE_FILES and OPTIONAL_FILES differ.
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


def eos_ids(config: dict, generation: dict) -> set[int]:
    """End-of-text token ids: generation_config.json's, else config.json's (an int or a list)."""
    value = generation.get("eos_token_id", config.get("eos_token_id"))
    if value is None:
        return set()
    return {int(v) for v in value} if isinstance(value, list) else {int(value)}


def past_shape(dims: list, layer: int, config: dict) -> tuple[int, int]:
    """(heads, head size) of a layer's cache: from the ONNX input when fixed there, else from config.json
    (less the layer's pruned heads)."""
    n_head = config["n_head"] - len(config.get("pruned_heads", {}).get(str(layer), []))
    heads = dims[1] if isinstance(dims[1], int) else n_head
    head_size = dims[3] if isinstance(dims[3], int) else config["n_embd"] // config["n_head"]
    return heads, head_size


class Generator:
    def __init__(self, bundle: Path = HERE, threads: int = 2, expect_manifest: str | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.manifest = verify(bundle, expect_manifest)
        files = self.manifest["files"]
        self.config = json.loads((bundle / "config.json").read_text())
        generation = (
            json.loads((bundle / "generation_config.json").read_text()) if "generation_config.json" in files else {}
        )
        self.eos = eos_ids(self.config, generation)
        self.n_positions = int(self.config.get("n_positions") or self.config.get("max_position_embeddings") or 1024)
        self.tokenizer = Tokenizer.from_file(str(bundle / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(bundle / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.past_names = [name for name in self.inputs if name.startswith("past_key_values.")]

    def encode(self, prompt: str) -> list[int]:
        ids = self.tokenizer.encode(prompt).ids
        if not ids:
            raise ValueError("the prompt is empty: give some text to continue")
        if len(ids) >= self.n_positions:
            raise ValueError(f"the prompt has {len(ids)} tokens; this model takes at most {self.n_positions - 1}")
        return ids

    def empty_past(self) -> dict:
        """Zero-length key/value tensors for the first step, shaped and typed as the model declares them."""
        import numpy as np

        past = {}
        for name in self.past_names:
            meta = self.inputs[name]
            heads, head_size = past_shape(meta.shape, int(name.split(".")[1]), self.config)
            past[name] = np.zeros((1, heads, 0, head_size), dtype=ONNX_FLOATS.get(meta.type, "float32"))
        return past

    def step(self, new_ids: list[int], past: dict, past_length: int):
        """(logits of the last position, the cache to feed next) after running `new_ids` on `past`."""
        import numpy as np

        length = past_length + len(new_ids)
        feed = {
            "input_ids": np.array([new_ids], dtype=np.int64),
            "attention_mask": np.ones((1, length), dtype=np.int64),
            "position_ids": np.arange(past_length, length, dtype=np.int64)[None, :],
            "use_cache_branch": np.array([past_length > 0]),
        }
        feed = {k: v for k, v in feed.items() if k in self.inputs} | past
        results = dict(zip(self.outputs, self.session.run(self.outputs, feed)))
        present = {name: results[name.replace("past_key_values.", "present.")] for name in self.past_names}
        return results["logits"][0, -1], present

    def generate(self, prompt: str, max_new_tokens: int = 32):
        """Yields the greedy continuation's token ids one by one (the end-of-text token is not yielded)."""
        ids = self.encode(prompt)
        past, past_length, new_ids = self.empty_past(), 0, ids
        for _ in range(min(max_new_tokens, self.n_positions - len(ids))):
            logits, past = self.step(new_ids, past, past_length)
            past_length += len(new_ids)
            token = int(logits.argmax())
            if token in self.eos:
                return
            yield token
            new_ids = [token]

    def stream(self, prompt: str, max_new_tokens: int = 32):
        """Yields the continuation as text pieces, holding back a piece that ends inside a UTF-8 character
        (byte-level tokens can split one)."""
        ids, shown = [], ""
        for token in self.generate(prompt, max_new_tokens):
            ids.append(token)
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            if text.endswith("\ufffd") or not text.startswith(shown):
                continue
            yield text[len(shown) :]
            shown = text
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if text != shown:
            yield text[len(shown) :] if text.startswith(shown) else text

    def continuation(self, prompt: str, max_new_tokens: int = 32) -> str:
        return self.tokenizer.decode(list(self.generate(prompt, max_new_tokens)), skip_special_tokens=True)


def read_jsonl(path: Path) -> list[str]:
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise BundleError(f"{path}:{number}: not JSON ({err.msg})") from None
        prompt = item.get("prompt") if isinstance(item, dict) else item
        if not isinstance(prompt, str):
            raise BundleError(f'{path}:{number}: expected a JSON string or an object with a "prompt" string')
        prompts.append(prompt)
    return prompts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate text with a miniaturize causal-LM edge bundle.")
    parser.add_argument("prompt", nargs="?", help="text to continue")
    parser.add_argument("--jsonl", type=Path, help='file with one JSON string or {"prompt": ...} per line')
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--expect-manifest",
        metavar="SHA256",
        help="refuse the bundle unless manifest.json has this sha256 (printed by miniaturize package)",
    )
    args = parser.parse_args(argv)
    if (args.prompt is None) == (args.jsonl is None):
        parser.error("give a prompt or --jsonl FILE (not both)")
    try:
        prompts = read_jsonl(args.jsonl) if args.jsonl else []
        generator = Generator(HERE, args.threads, args.expect_manifest)
        if args.jsonl:
            for prompt in prompts:
                row = {"prompt": prompt, "continuation": generator.continuation(prompt, args.max_new_tokens)}
                print(json.dumps(row), flush=True)
        else:
            for piece in generator.stream(args.prompt, args.max_new_tokens):
                sys.stdout.write(piece)
                sys.stdout.flush()
            print(flush=True)
    except (BundleError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
