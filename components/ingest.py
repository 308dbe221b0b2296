"""Stage 1, ingest: load the raw data, label it, drop exact duplicates and split it by seed.

Sources (`data.source`):
- `vader-movie` (default, offline): the human-rated movie-review snippets inside the vaderSentiment
  3.3.2 source archive, fetched with pip, sha256-verified, ratings thresholded into negative/positive;
- a local CSV, JSONL or Parquet file with `text` and `label` columns (labels may be strings);
- a Hugging Face dataset id (needs the `datasets` package and a connection).

A local file must lie inside the workspace `root` (relative paths are relative to it; symlinks are
followed first), so a run only reads data the project can version. Files are read strictly: UTF-8 only,
the format must match the extension, a CSV row with more or fewer fields than the header, a cut-off
JSONL line or Parquet footer, an empty file, texts that are not strings, labels that are not strings or
integers, and more exact duplicates than `max_duplicate_share` each raise `DataError` naming the file and
the problem (the CLI exits 2), before anything is written.

Writes `train/validation/test.parquet` (columns `text`, `label`) and `data_card.json` to `out_dir`. For
the built-in source it also writes `transfer.parquet`: the archive's other sentences (tweets, editorials,
product reviews) and the neutral movie snippets, unlabelled, for distillation from the teacher's soft
outputs; no text of the validation or test split (compared case-folded) is ever in it.
Content checks (empty texts, unknown labels, ...) belong to the validate stage, so ingest keeps rows as
they are apart from exact duplicates.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import DataConfig
from components.tracking import StageResult, Tracker

SPLITS = ("train", "validation", "test")
VADER_VERSION = "3.3.2"
VADER_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
VADER_ARCHIVE = f"vaderSentiment-{VADER_VERSION}.tar.gz"
VADER_MEMBERS = {
    "movie": "movieReviewSnippets",
    "tweets": "tweets",
    "nyt": "nytEditorialSnippets",
    "amazon": "amazonReviewSnippets",
}
BUILTIN_LABELS = ["negative", "positive"]
# Extension -> (format name, what `sniff` finds at the start of such a file).
FORMATS = {".csv": ("CSV", "text"), ".jsonl": ("JSON Lines", "JSON Lines"), ".ndjson": ("JSON Lines", "JSON Lines"),
           ".parquet": ("Parquet", "Parquet"), ".pq": ("Parquet", "Parquet")}
# What the `text` and `label` cells of a user's file may hold (plus nulls, which validate reports).
ALLOWED_KINDS = {"text": ("str",), "label": ("str", "int")}


class DataError(ValueError):
    """The data cannot be read or split; the message says what and where."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_vader_archive(cache_dir: Path) -> Path:
    """Download the vaderSentiment source archive with pip (once) and verify its sha256."""
    archive = cache_dir / VADER_ARCHIVE
    if not archive.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               f"vaderSentiment=={VADER_VERSION}", "-d", str(cache_dir)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not archive.exists():
            raise DataError(f"could not fetch {VADER_ARCHIVE} with pip: {done.stderr.strip()[-500:]}")
    actual = sha256_file(archive)
    if actual != VADER_SHA256:
        archive.unlink()
        raise DataError(f"{VADER_ARCHIVE} sha256 is {actual}, expected {VADER_SHA256}; removed it")
    return archive


def read_vader_ratings(archive: Path, member: str) -> pd.DataFrame:
    """Rows of `hutto_ICWSM_2014/<member>_GroundTruth.txt`: id, mean rating, sentence."""
    with tarfile.open(archive) as outer:
        inner_name = f"vaderSentiment-{VADER_VERSION}/additional_resources/hutto_ICWSM_2014.tar.gz"
        inner_bytes = outer.extractfile(inner_name).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        raw = inner.extractfile(f"hutto_ICWSM_2014/{member}_GroundTruth.txt").read()
    rows = []
    # The files mix encodings; undecodable bytes become U+FFFD rather than failing the run.
    for line in raw.decode("utf-8", errors="replace").splitlines():
        parts = line.split("\t", 2)
        if len(parts) == 3:
            try:
                rows.append((float(parts[1]), parts[2].strip()))
            except ValueError:
                continue
    return pd.DataFrame(rows, columns=["rating", "text"])


def label_ratings(frame: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Ratings >= +threshold are positive, <= -threshold negative; the rest are dropped."""
    label = np.where(frame["rating"] >= threshold, "positive",
                     np.where(frame["rating"] <= -threshold, "negative", ""))
    out = pd.DataFrame({"text": frame["text"], "label": label})
    return out[out["label"] != ""].reset_index(drop=True)


def workspace_path(source: str | Path, root: Path, key: str) -> Path:
    """`source` (relative to `root`) with symlinks followed; it must stay inside the workspace `root`."""
    root = Path(root).resolve()
    path = (root / source).resolve()
    if not path.is_relative_to(root):
        raise DataError(f"data file {source} ({key}) escapes the workspace {root}: it resolves to {path}. Copy "
                        f"it under {root / 'data'} (or track it there with `dvc add`, or `dvc import` it from "
                        f"its repository) and point {key} at that copy")
    return path


def sniff(head: bytes) -> str:
    """What the first bytes of a file look like, for files that are not what their name says."""
    for magic, kind in ((b"PAR1", "Parquet"), (b"\x1f\x8b", "gzip"), (b"PK\x03\x04", "a zip archive (Excel?)"),
                        (b"\xff\xfe", "UTF-16 text"), (b"\xfe\xff", "UTF-16 text")):
        if head.startswith(magic):
            return kind
    if b"\x00" in head:
        return "binary data"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    return "JSON Lines" if text.startswith(b"{") else "a JSON array" if text.startswith(b"[") else "text"


def decode_utf8(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(f"data file {path} is not valid UTF-8: byte 0x{raw[err.start]:02x} at offset {err.start} "
                        f"(line {line}); re-save it as UTF-8") from None


def parse_csv(text: str, path: Path) -> pd.DataFrame:
    """Every cell a string. The standard csv module rather than pandas: pandas silently turns an extra
    field in the first data row into an index column, shifting every value of that row."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        rows = [(reader.line_num, row) for row in reader if row]  # blank lines are skipped
    except csv.Error as err:
        raise DataError(f"data file {path} is not valid CSV at line {reader.line_num}: {err} (a quote left open, "
                        "or the file is cut off)") from None
    if not rows:
        raise DataError(f"data file {path} has no header and no rows")
    header = rows[0][1]
    for index, (line, row) in enumerate(rows[1:], start=1):
        if len(row) != len(header):
            why = ("an unquoted comma? quote texts that contain commas" if len(row) > len(header) else
                   "the file looks cut off" if index == len(rows) - 1 else "a field is missing")
            raise DataError(f"data file {path} line {line} has {len(row)} field{'s' * (len(row) != 1)}, the header "
                            f"({','.join(header)}) has {len(header)}: {why}")
    return pd.DataFrame([row for _, row in rows[1:]], columns=header, dtype=object)


def parse_jsonl(text: str, path: Path) -> pd.DataFrame:
    """One JSON object per line; cells keep their JSON types (checked by `check_column_types`)."""
    lines = text.split("\n")  # not splitlines(): U+2028 and friends may sit unescaped inside strings
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            cut = "; the file looks cut off" if not any(rest.strip() for rest in lines[number:]) else ""
            raise DataError(f"data file {path} line {number} is not valid JSON at column {err.colno} ({err.msg})"
                            f"{cut}") from None
        if not isinstance(record, dict):
            raise DataError(f"data file {path} line {number} holds a JSON {type(record).__name__}, not an object "
                            "with `text` and `label`")
        records.append(record)
    return pd.DataFrame(records, dtype=object)


def read_table(path: Path) -> pd.DataFrame:
    """A user's CSV, JSONL or Parquet file, chosen by extension and checked against its first bytes."""
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"unsupported data file {path.name}: use .csv, .jsonl or .parquet")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"data file {path} is empty ({len(raw)} bytes{' of whitespace' if raw else ''})")
    (expected, signature), found = FORMATS[suffix], sniff(raw[:64])
    if found != signature:
        raise DataError(f"data file {path} is not a {expected} file: it starts like {found} ({raw[:24]!r})")
    if expected == "Parquet":
        if not raw.endswith(b"PAR1"):
            raise DataError(f"data file {path} is truncated: it starts like Parquet but has no Parquet footer "
                            f"(it should end with PAR1; {len(raw)} bytes); copy it again")
        try:
            frame = pd.read_parquet(io.BytesIO(raw))
        except (ValueError, OSError) as err:
            raise DataError(f"could not read {path} as Parquet: {err}") from None
    elif expected == "CSV":
        frame = parse_csv(decode_utf8(raw, path), path)
    else:
        frame = parse_jsonl(decode_utf8(raw, path), path)
    if len(frame) == 0:
        raise DataError(f"data file {path} has no rows")
    return frame


def value_kind(value) -> str:
    """'missing', 'str', 'int', 'float', 'bool', 'list', ... for one cell."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return "list"
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return "missing"
    for kind, types in (("str", str), ("bool", (bool, np.bool_)), ("int", (int, np.integer)),
                        ("float", (float, np.floating))):
        if isinstance(value, types):
            return kind
    return type(value).__name__


def check_column_types(frame: pd.DataFrame, where: str, columns: tuple[str, ...] = ("text", "label")) -> None:
    """Texts must be strings and labels strings or integers: anything else would be turned into a string
    ("0.5", "['a', 'b']", "42") and pass for data."""
    for column in columns:
        if column not in frame.columns:
            continue  # the validate stage reports a missing column with the others
        kinds = frame[column].map(value_kind).to_numpy()
        bad = np.flatnonzero(~np.isin(kinds, ALLOWED_KINDS[column] + ("missing",)))
        if len(bad):
            first = bad[0]
            raise DataError(f"{where}: column {column!r} must hold {' or '.join(ALLOWED_KINDS[column])} values, "
                            f"but {len(bad)} of {len(frame)} rows hold {'/'.join(sorted(set(kinds[bad])))} "
                            f"(row {first}: {str(frame[column].iloc[first])[:60]})")


def read_hub_dataset(dataset_id: str) -> pd.DataFrame:
    try:
        import datasets  # optional, only for hub ids
    except ImportError:
        raise DataError(f"{dataset_id!r} is neither a file nor a built-in source; "
                        "hub datasets need `pip install datasets` and a connection") from None
    try:
        loaded = datasets.load_dataset(dataset_id)
    except Exception as err:  # noqa: BLE001 - the hub raises many kinds; the message matters
        raise DataError(f"could not load hub dataset {dataset_id!r}: {err}") from None
    return pd.concat([split.to_pandas() for split in loaded.values()], ignore_index=True)


def load_source(cfg: DataConfig, cache_dir: Path, root: Path = Path(".")) -> tuple[pd.DataFrame, str, str]:
    """Returns (frame, source description, sha256 of the source bytes); a file is read relative to `root`."""
    if cfg.source == "vader-movie":
        archive = fetch_vader_archive(cache_dir)
        frame = label_ratings(read_vader_ratings(archive, VADER_MEMBERS["movie"]), cfg.threshold)
        return frame, f"vaderSentiment=={VADER_VERSION}:{VADER_MEMBERS['movie']}", VADER_SHA256
    if Path(cfg.source).suffix or (Path(root) / cfg.source).exists():
        path = workspace_path(cfg.source, root, "data.source")
        frame = read_table(path)
        check_column_types(frame, f"data file {path}")
        return frame, path.relative_to(Path(root).resolve()).as_posix(), sha256_file(path)
    frame = read_hub_dataset(cfg.source)
    check_column_types(frame, f"hub dataset {cfg.source!r}")
    return frame, f"hub:{cfg.source}", hashlib.sha256(cfg.source.encode()).hexdigest()


def text_key(text: str) -> str:
    """The form texts are compared in for overlap: case-folded, whitespace collapsed."""
    return " ".join(str(text).casefold().split())


def transfer_set(archive: Path, threshold: float, exclude: set[str]) -> pd.DataFrame:
    """Unlabelled sentences for distillation: the other sources plus the neutral movie snippets."""
    movie = read_vader_ratings(archive, VADER_MEMBERS["movie"])
    parts = [movie[movie["rating"].abs() < threshold]["text"]]
    parts += [read_vader_ratings(archive, VADER_MEMBERS[name])["text"] for name in ("tweets", "nyt", "amazon")]
    texts = pd.concat(parts, ignore_index=True)
    keys = texts.map(text_key)
    keep = ~keys.isin(exclude) & ~keys.duplicated() & (texts.str.strip() != "")
    return pd.DataFrame({"text": texts[keep].reset_index(drop=True)})


def normalize_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep `text` and `label` as strings when present; validation reports what is missing."""
    frame = frame.copy()
    for column in ("text", "label"):
        if column in frame.columns:
            frame[column] = frame[column].map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    return frame


def drop_exact_duplicates(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    key = ["text"] if "text" in frame.columns else list(frame.columns)
    deduped = frame.drop_duplicates(subset=key, keep="first").reset_index(drop=True)
    return deduped, len(frame) - len(deduped)


def check_duplicate_share(frame: pd.DataFrame, dropped: int, source: str, max_share: float) -> None:
    """A few repeated rows are dropped quietly; many mean a broken export (rows appended twice, a join that
    fanned out), which training on the rest would hide. `frame` is the data before de-duplication."""
    share = dropped / len(frame) if len(frame) else 0.0
    if share > max_share and "text" in frame.columns:
        text, count = next(iter(frame["text"].value_counts().items()))
        raise DataError(f"data source {source}: {dropped} of {len(frame)} rows ({share:.0%}) repeat an earlier "
                        f"row's text, more than data.max_duplicate_share {max_share:.0%}; most repeated: "
                        f"{str(text)[:60]!r} x{count}")


def stratified_split(frame: pd.DataFrame, shares: tuple[float, float, float], seed: int,
                     max_rows: int | None = None) -> dict[str, pd.DataFrame]:
    """Deterministic split by seed, stratified on `label` when every class has enough rows."""
    rng = np.random.default_rng(seed)
    groups = ([idx for _, idx in frame.groupby("label", sort=True).indices.items()]
              if "label" in frame.columns and frame["label"].notna().all() else [np.arange(len(frame))])
    if max_rows is not None and max_rows < len(frame):
        keep = max_rows / len(frame)
        groups = [rng.permutation(g)[: max(3, round(len(g) * keep))] for g in groups]
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    for group in groups:
        order = rng.permutation(group)
        n_train = round(len(order) * shares[0])
        n_val = round(len(order) * shares[1])
        parts["train"].append(order[:n_train])
        parts["validation"].append(order[n_train:n_train + n_val])
        parts["test"].append(order[n_train + n_val:])
    return {name: frame.iloc[np.sort(np.concatenate(idx))].reset_index(drop=True)
            for name, idx in parts.items()}


def describe(splits: dict[str, pd.DataFrame], source: str, sha256: str, dropped: int,
             labels: list[str]) -> dict:
    card = {"source": source, "sha256": sha256, "duplicates_dropped": dropped, "labels": labels,
            "rows": {name: len(df) for name, df in splits.items()}, "label_balance": {}, "length": {}}
    for name, df in splits.items():
        if "label" in df.columns:
            card["label_balance"][name] = {str(k): int(v) for k, v in df["label"].value_counts().sort_index().items()}
        if "text" in df.columns:
            words = df["text"].fillna("").str.split().str.len()
            card["length"][name] = {"mean_words": round(float(words.mean()), 2) if len(df) else 0.0,
                                    "max_words": int(words.max()) if len(df) else 0,
                                    "p95_words": float(words.quantile(0.95)) if len(df) else 0.0}
    return card


def run(cfg: DataConfig, out_dir: Path, tracker: Tracker, cache_dir: Path = Path("data/raw"),
        root: Path = Path(".")) -> StageResult:
    frame, source, sha256 = load_source(cfg, cache_dir, root)
    frame = normalize_columns(frame)
    deduped, dropped = drop_exact_duplicates(frame)
    check_duplicate_share(frame, dropped, source, cfg.max_duplicate_share)
    frame = deduped
    if cfg.source == "vader-movie":
        labels = list(BUILTIN_LABELS)
    elif cfg.labels is not None:
        labels = list(cfg.labels)
    else:
        labels = sorted(frame["label"].dropna().unique().tolist()) if "label" in frame.columns else []
    splits = stratified_split(frame, cfg.split, cfg.seed, cfg.max_rows)

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, df in splits.items():
        df.to_parquet(out_dir / f"{name}.parquet", index=False)
    card = describe(splits, source, sha256, dropped, labels)
    if cfg.source == "vader-movie" and cfg.transfer:
        # Labelled texts are excluded too: they are in the train split already, or held out.
        exclude = set(frame["text"].map(text_key))
        transfer = transfer_set(fetch_vader_archive(cache_dir), cfg.threshold, exclude)
        if cfg.max_rows is not None:
            transfer = transfer.sample(n=min(len(transfer), cfg.max_rows), random_state=cfg.seed)
        transfer.to_parquet(out_dir / "transfer.parquet", index=False)
        card["rows_transfer"] = len(transfer)
    elif (out_dir / "transfer.parquet").exists():
        (out_dir / "transfer.parquet").unlink()
    (out_dir / "data_card.json").write_text(json.dumps(card, indent=2))

    tracker.log_params({"source": source, "source_sha256": sha256, "labels": ",".join(labels)})
    tracker.log_metrics({f"rows_{k}": v for k, v in card["rows"].items()} | {"duplicates_dropped": dropped})
    tracker.log_artifact(out_dir / "data_card.json")
    return StageResult(metrics={f"rows_{k}": float(v) for k, v in card["rows"].items()},
                       outputs={"prepared": out_dir}, info={"card": card})
