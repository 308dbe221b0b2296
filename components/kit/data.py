"""Reading raw data, shared by both tasks' ingest stages (`classification.ingest`, `causal_lm.data`).

- The built-in source: the vaderSentiment 3.3.2 source archive. `fetch_vader_archive` downloads the file
  from the package index pip is configured with and checks its sha256 against the pin before anything
  opens it; nothing in it is ever run (`pip download` would run its setup.py to read the metadata, before
  any hash check). `read_vader_ratings` reads one of its rated-sentence files.
- A user's file: `workspace_path` refuses a path that leaves the workspace (symlinks followed first), and
  `read_table` reads CSV, JSONL or Parquet strictly: UTF-8 only (`decode_utf8`), the format must match the
  extension (`sniff`), a CSV row with more or fewer fields than the header, a cut-off JSONL line or Parquet
  footer, or an empty file raise `DataError` naming the file and the problem. `check_column_types` refuses
  texts that are not strings and labels that are not strings or integers.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import ssl
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urldefrag, urljoin, urlsplit
from urllib.request import Request, url2pathname, urlopen

import numpy as np
import pandas as pd

from components.kit.hashing import file_sha256

VADER_VERSION = "3.3.2"
VADER_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
VADER_ARCHIVE = f"vaderSentiment-{VADER_VERSION}.tar.gz"
VADER_PROJECT = "vadersentiment"  # the name's normalised form in a simple-API index URL (PEP 503)
VADER_MEMBERS = {
    "movie": "movieReviewSnippets",
    "tweets": "tweets",
    "nyt": "nytEditorialSnippets",
    "amazon": "amazonReviewSnippets",
}
DEFAULT_INDEX = "https://pypi.org/simple"  # pip's, when no index-url is configured
FETCH_TIMEOUT_S = 60  # seconds without data before a download is given up
# Extension -> (format name, what `sniff` finds at the start of such a file).
FORMATS = {
    ".csv": ("CSV", "text"),
    ".jsonl": ("JSON Lines", "JSON Lines"),
    ".ndjson": ("JSON Lines", "JSON Lines"),
    ".parquet": ("Parquet", "Parquet"),
    ".pq": ("Parquet", "Parquet"),
}
# What the `text` and `label` cells of a user's file may hold (plus nulls, which validate reports).
ALLOWED_KINDS = {"text": ("str",), "label": ("str", "int")}
MIN_SENTENCE_CHARS = 2  # of an archive sentence, after stripping (read_vader_ratings)


class DataError(ValueError):
    """The data cannot be read or split; the message says what and where."""


@dataclass(frozen=True)
class IndexSettings:
    """Where pip looks for packages on this machine."""

    urls: tuple[str, ...]  # index-url first, then the extra-index-urls
    cert: str | None = None  # CA bundle for HTTPS, when pip is given one


def index_settings(pip_config: str) -> IndexSettings:
    """The indexes and CA bundle from `pip config list` output (`section.key='value'` lines). As in pip,
    the environment (`:env:`) overrides the `download` section, which overrides `global`."""
    values = {}
    for line in pip_config.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip("'\"")

    def pick(name: str) -> str | None:
        return next(
            (
                values[f"{section}.{name}"]
                for section in (":env:", "download", "global")
                if f"{section}.{name}" in values
            ),
            None,
        )

    urls = [pick("index-url") or DEFAULT_INDEX, *(pick("extra-index-url") or "").split()]
    return IndexSettings(tuple(urls), pick("cert") or None)


def read_pip_config() -> str:
    """`pip config list` (pip's own settings, nothing from any package); empty when pip is not there."""
    done = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else ""


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs += [value for name, value in attrs if name == "href" and value]


def archive_link(page: str, page_url: str, filename: str) -> str | None:
    """The URL of `filename` on a simple-API project page (PEP 503 HTML), or None when it is not listed."""
    links = _Links()
    links.feed(page)
    for href in links.hrefs:
        url = urldefrag(urljoin(page_url, href)).url  # the page's #sha256 is not trusted: the pin is checked
        if unquote(PurePosixPath(urlsplit(url).path).name) == filename:
            return url
    return None


def shown(url: str) -> str:
    """`url` without any user and password in it, for messages (an index URL may carry a token)."""
    parts = urlsplit(url)
    if not (parts.username or parts.password):
        return url
    host = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname
    return parts._replace(netloc=f"***@{host}").geturl()


def open_url(url: str, context: ssl.SSLContext | None):
    """A readable response for an http(s) URL, or the file for a file: URL (a folder's index.html, as in a
    local pip index)."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        path = Path(url2pathname(parts.path))
        return open(path / "index.html" if path.is_dir() else path, "rb")
    request = Request(url, headers={"User-Agent": "miniaturize-ingest"})
    return urlopen(request, timeout=FETCH_TIMEOUT_S, context=context)


def find_archive_url(indexes: tuple[str, ...], context: ssl.SSLContext | None) -> str:
    """The first index whose vaderSentiment page lists the source archive gives its URL."""
    tried = []
    for index in indexes:
        page_url = f"{index.rstrip('/')}/{VADER_PROJECT}/"
        try:
            with open_url(page_url, context) as response:
                page = response.read().decode("utf-8", errors="replace")
        except (OSError, ValueError) as err:  # URLError and HTTPError are OSErrors
            tried.append(f"{shown(page_url)} ({err})")
            continue
        url = archive_link(page, page_url, VADER_ARCHIVE)
        if url is not None:
            return url
        tried.append(f"{shown(page_url)} (does not list it)")
    raise DataError(f"could not find {VADER_ARCHIVE} on the package index: tried {'; '.join(tried)}")


def download_verified(url: str, dest: Path, expected_sha256: str, context: ssl.SSLContext | None) -> None:
    """Stream `url` into a temporary file beside `dest`, hashing as it arrives; only a file whose sha256 is
    `expected_sha256` is moved to `dest`. Anything else is deleted unopened, so a tampered index can only
    make the run stop."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    digest = hashlib.sha256()
    try:
        with os.fdopen(handle, "wb") as out, open_url(url, context) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
    except (OSError, ValueError) as err:
        Path(partial).unlink(missing_ok=True)
        raise DataError(f"could not download {dest.name} from {shown(url)}: {err}") from None
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    if digest.hexdigest() != expected_sha256:
        Path(partial).unlink()
        raise DataError(
            f"{dest.name} from {shown(url)} has sha256 {digest.hexdigest()}, expected "
            f"{expected_sha256}; deleted it unopened"
        )
    os.chmod(partial, 0o644)  # mkstemp's 0600 would hide the shared cache from other users
    os.replace(partial, dest)


def fetch_vader_archive(cache_dir: Path, indexes: tuple[str, ...] | None = None) -> Path:
    """The vaderSentiment source archive in `cache_dir`, downloaded once from `indexes` (default: the
    indexes pip is configured with), its sha256 checked each time before anything opens it."""
    archive = cache_dir / VADER_ARCHIVE
    if not archive.exists():
        settings = index_settings(read_pip_config())
        context = ssl.create_default_context(cafile=settings.cert) if settings.cert else None
        url = find_archive_url(indexes if indexes is not None else settings.urls, context)
        download_verified(url, archive, VADER_SHA256, context)
    return checked_pin(archive, VADER_SHA256)


def checked_pin(archive: Path, expected_sha256: str) -> Path:
    """`archive` when its sha256 is the pinned one; else it is deleted unopened and a `DataError` says so
    (checked on every use, not only after a download: a cache can be changed)."""
    actual = file_sha256(archive)
    if actual != expected_sha256:
        archive.unlink()
        raise DataError(
            f"{archive.name} in {archive.parent} has sha256 {actual}, expected {expected_sha256}; deleted it unopened"
        )
    return archive


def read_vader_ratings(archive: Path, member: str) -> pd.DataFrame:
    """Rows of `hutto_ICWSM_2014/<member>_GroundTruth.txt`: mean rating, sentence. A "sentence" of fewer than
    MIN_SENTENCE_CHARS characters is left out: the product reviews hold three that are a lone "!", which the
    validate stage (`validate.min_chars`, 2) would refuse in any batch built from them."""
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
                rating, text = float(parts[1]), parts[2].strip()
            except ValueError:
                continue
            if len(text) >= MIN_SENTENCE_CHARS:
                rows.append((rating, text))
    return pd.DataFrame(rows, columns=["rating", "text"])


def workspace_path(source: str | Path, root: Path, key: str) -> Path:
    """`source` (relative to `root`) with symlinks followed; it must stay inside the workspace `root`."""
    root = Path(root).resolve()
    path = (root / source).resolve()
    if not path.is_relative_to(root):
        raise DataError(
            f"data file {source} ({key}) escapes the workspace {root}: it resolves to {path}. Copy "
            f"it under {root / 'data'} (or track it there with `dvc add`, or `dvc import` it from "
            f"its repository) and point {key} at that copy"
        )
    return path


def sniff(head: bytes) -> str:
    """What the first bytes of a file look like, for files that are not what their name says."""
    for magic, kind in (
        (b"PAR1", "Parquet"),
        (b"\x1f\x8b", "gzip"),
        (b"PK\x03\x04", "a zip archive (Excel?)"),
        (b"\xff\xfe", "UTF-16 text"),
        (b"\xfe\xff", "UTF-16 text"),
    ):
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
        raise DataError(
            f"data file {path} is not valid UTF-8: byte 0x{raw[err.start]:02x} at offset {err.start} "
            f"(line {line}); re-save it as UTF-8"
        ) from None


def parse_csv(text: str, path: Path) -> pd.DataFrame:
    """Every cell a string. The standard csv module rather than pandas: pandas silently turns an extra
    field in the first data row into an index column, shifting every value of that row."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        rows = [(reader.line_num, row) for row in reader if row]  # blank lines are skipped
    except csv.Error as err:
        raise DataError(
            f"data file {path} is not valid CSV at line {reader.line_num}: {err} (a quote left open, "
            "or the file is cut off)"
        ) from None
    if not rows:
        raise DataError(f"data file {path} has no header and no rows")
    header = rows[0][1]
    for index, (line, row) in enumerate(rows[1:], start=1):
        if len(row) != len(header):
            why = (
                "an unquoted comma? quote texts that contain commas"
                if len(row) > len(header)
                else "the file looks cut off"
                if index == len(rows) - 1
                else "a field is missing"
            )
            raise DataError(
                f"data file {path} line {line} has {len(row)} field{'s' * (len(row) != 1)}, the header "
                f"({','.join(header)}) has {len(header)}: {why}"
            )
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
            raise DataError(
                f"data file {path} line {number} is not valid JSON at column {err.colno} ({err.msg}){cut}"
            ) from None
        if not isinstance(record, dict):
            raise DataError(
                f"data file {path} line {number} holds a JSON {type(record).__name__}, not an object "
                "with `text` and `label`"
            )
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
            raise DataError(
                f"data file {path} is truncated: it starts like Parquet but has no Parquet footer "
                f"(it should end with PAR1; {len(raw)} bytes); copy it again"
            )
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
    for kind, types in (
        ("str", str),
        ("bool", (bool, np.bool_)),
        ("int", (int, np.integer)),
        ("float", (float, np.floating)),
    ):
        if isinstance(value, types):
            return kind
    return type(value).__name__


def check_column_types(frame: pd.DataFrame, where: str, columns: tuple[str, ...] = ("text", "label")) -> None:
    """Texts must be strings and labels (every column but `text`) strings or integers: anything else would be
    turned into a string ("0.5", "['a', 'b']", "42") and pass for data."""
    for column in columns:
        if column not in frame.columns:
            continue  # the validate stage reports a missing column with the others
        allowed = ALLOWED_KINDS["text" if column == "text" else "label"]
        kinds = frame[column].map(value_kind).to_numpy()
        bad = np.flatnonzero(~np.isin(kinds, allowed + ("missing",)))
        if len(bad):
            first = bad[0]
            raise DataError(
                f"{where}: column {column!r} must hold {' or '.join(allowed)} values, "
                f"but {len(bad)} of {len(frame)} rows hold {'/'.join(sorted(set(kinds[bad])))} "
                f"(row {first}: {str(frame[column].iloc[first])[:60]})"
            )
