import functools
import http.server
import io
import json
import tarfile
import threading
from pathlib import Path

import pandas as pd
import pytest

from components import ingest, validate
from components.config import DataConfig
from components.text import text_key
from components.tracking import NullTracker
from tests.conftest import make_frame


def test_label_ratings_thresholds_and_drops_neutral():
    frame = pd.DataFrame({"rating": [1.2, 0.5, 0.49, -0.49, -0.5, -3.0], "text": list("abcdef")})
    out = ingest.label_ratings(frame, 0.5)
    assert out["text"].tolist() == ["a", "b", "e", "f"]
    assert out["label"].tolist() == ["positive", "positive", "negative", "negative"]


def test_split_is_deterministic_stratified_and_disjoint():
    frame = make_frame(100)
    a = ingest.stratified_split(frame, (0.8, 0.1, 0.1), seed=3)
    b = ingest.stratified_split(frame, (0.8, 0.1, 0.1), seed=3)
    c = ingest.stratified_split(frame, (0.8, 0.1, 0.1), seed=4)
    assert all(a[k].equals(b[k]) for k in a)
    assert not a["test"].equals(c["test"])
    assert [len(a[k]) for k in ingest.SPLITS] == [160, 20, 20]
    assert (a["test"]["label"].value_counts() == 10).all()
    texts = [set(a[k]["text"]) for k in ingest.SPLITS]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])


def test_max_rows_caps_while_keeping_balance():
    parts = ingest.stratified_split(make_frame(100), (0.8, 0.1, 0.1), seed=0, max_rows=50)
    total = sum(len(p) for p in parts.values())
    assert total == 50
    assert parts["train"]["label"].value_counts().nunique() == 1


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_run_reads_user_files_and_writes_card(tmp_path, suffix):
    frame = pd.concat([make_frame(30), make_frame(2)])  # 4 exact duplicates
    frame["label"] = frame["label"].map({"positive": "pos", "negative": "neg"})
    src = tmp_path / f"data{suffix}"
    {".csv": lambda p: frame.to_csv(p, index=False),
     ".jsonl": lambda p: frame.to_json(p, orient="records", lines=True),
     ".parquet": lambda p: frame.to_parquet(p, index=False)}[suffix](src)
    result = ingest.run(DataConfig(source=str(src)), tmp_path / "out", NullTracker(), root=tmp_path)
    card = json.loads((tmp_path / "out" / "data_card.json").read_text())
    assert card["labels"] == ["neg", "pos"]
    assert card["duplicates_dropped"] == {"exact": 4, "normalised": 0}
    assert card["conflicting_labels_dropped"] == 0
    assert sum(card["rows"].values()) == 60 == sum(result.metrics.values())
    assert card["sha256"] == ingest.sha256_file(src)
    assert pd.read_parquet(tmp_path / "out" / "train.parquet").columns.tolist() == ["text", "label"]


def test_csv_with_quoted_newlines_and_delimiters_is_parsed(tmp_path):
    src = tmp_path / "d.csv"
    src.write_text('text,label\n"a line, with comma\nand newline",pos\n"plain",neg\n')
    frame = ingest.read_table(src)
    assert frame["text"].tolist() == ["a line, with comma\nand newline", "plain"]


def test_missing_file_and_unknown_format_say_so(tmp_path):
    with pytest.raises(ingest.DataError, match="does not exist"):
        ingest.read_table(tmp_path / "nope.csv")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ingest.DataError, match="unsupported data file"):
        ingest.read_table(tmp_path / "x.txt")


# --- the built-in archive: verified before it is opened, never run ---------------------------------

def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def fake_sdist(path: Path, marker: Path, ratings: dict[str, str]) -> Path:
    """A vaderSentiment-shaped source archive that leaves `marker` behind if anything runs its code: pip
    runs an sdist's build backend (here one inside the archive, so no download is needed) to read its
    metadata, and its setup.py with setuptools."""
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        for member, text in ratings.items():
            add_member(tar, f"hutto_ICWSM_2014/{member}_GroundTruth.txt", text.encode())
    root = f"vaderSentiment-{ingest.VADER_VERSION}"
    payload = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
    build_system = '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        add_member(tar, f"{root}/pyproject.toml", build_system.encode())
        add_member(tar, f"{root}/backend.py", payload.encode())
        add_member(tar, f"{root}/setup.py", payload.encode())
        add_member(tar, f"{root}/PKG-INFO",
                   f"Metadata-Version: 1.0\nName: vaderSentiment\nVersion: {ingest.VADER_VERSION}\n".encode())
        add_member(tar, f"{root}/additional_resources/hutto_ICWSM_2014.tar.gz", inner.getvalue())
    return path


MOVIE = "1\t2.5\tA fine   FILM\n2\t-2.0\tA dull film\n3\t0.1\tA film\n"


@pytest.fixture
def fake_index(tmp_path):
    """A simple-API package index on 127.0.0.1 serving a fake archive (relative link, as PyPI mirrors
    often write them). Yields (index URL, archive path, marker path)."""
    site, marker = tmp_path / "site", tmp_path / "archive-code-ran"
    archive = fake_sdist(site / "files" / ingest.VADER_ARCHIVE, marker,
                         {"movieReviewSnippets": MOVIE, "tweets": "1\t0.0\ta fine film\n4\t1.0\tsunny\n",
                          "nytEditorialSnippets": "", "amazonReviewSnippets": "5\t-1.0\tbroke\n"})
    page = site / "simple" / "vadersentiment" / "index.html"  # the project's normalised name (PEP 503)
    page.parent.mkdir(parents=True)
    page.write_text(f'<html><body><a href="../../files/{ingest.VADER_ARCHIVE}#sha256='
                    f'{ingest.sha256_file(archive)}">{ingest.VADER_ARCHIVE}</a></body></html>')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/simple", archive, marker
    server.shutdown()
    server.server_close()


def test_tampered_archive_is_refused_before_anything_runs_or_is_unpacked(fake_index, tmp_path, monkeypatch):
    index, archive, marker = fake_index
    # Point pip's own configuration at the fake index, so any pip call would use it too.
    monkeypatch.setenv("PIP_INDEX_URL", index)
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    cache = tmp_path / "raw"
    with pytest.raises(ingest.DataError) as caught:
        ingest.fetch_vader_archive(cache)
    assert not marker.exists(), "code from the archive ran"
    message = str(caught.value)
    assert ingest.sha256_file(archive) in message and ingest.VADER_SHA256 in message, message
    assert not cache.exists() or not any(cache.iterdir()), list(cache.iterdir())


def test_archive_matching_the_pin_is_read_without_running_it(fake_index, tmp_path, monkeypatch):
    index, archive, marker = fake_index
    monkeypatch.setattr(ingest, "VADER_SHA256", ingest.sha256_file(archive))
    cache = tmp_path / "raw"
    fetched = ingest.fetch_vader_archive(cache, indexes=("http://127.0.0.1:9/nothing-here", index))
    assert [p.name for p in cache.iterdir()] == [ingest.VADER_ARCHIVE] and fetched == cache / ingest.VADER_ARCHIVE
    assert ingest.read_vader_ratings(fetched, "movieReviewSnippets")["text"].tolist() == [
        "A fine   FILM", "A dull film", "A film"]
    assert not marker.exists()
    # Transfer sentences are excluded by the same key the splits are compared by.
    exclude = {text_key("A fine   FILM"), text_key("A dull film")}
    assert ingest.transfer_set(fetched, 0.5, exclude)["text"].tolist() == ["A film", "sunny", "broke"]


def test_cached_archive_is_checked_before_it_is_opened(tmp_path, monkeypatch):
    cache = tmp_path / "raw"
    cache.mkdir()
    (cache / ingest.VADER_ARCHIVE).write_bytes(b"not the archive")
    monkeypatch.setattr(ingest.tarfile, "open", lambda *a, **k: pytest.fail("opened an unverified archive"))
    with pytest.raises(ingest.DataError, match=f"expected {ingest.VADER_SHA256}; deleted it unopened"):
        ingest.fetch_vader_archive(cache, indexes=())
    assert not any(cache.iterdir())


def test_index_settings_follow_pip_precedence():
    listed = ("global.cert='/ca.pem'\nglobal.extra-index-url='file:///a/simple file:///b/simple'\n"
              "global.index-url='https://mirror.example/simple'\n")
    assert ingest.index_settings(listed) == ingest.IndexSettings(
        ("https://mirror.example/simple", "file:///a/simple", "file:///b/simple"), "/ca.pem")
    overridden = ":env:.extra-index-url=''\n:env:.index-url='http://local/simple'\n" + listed
    assert ingest.index_settings(overridden).urls == ("http://local/simple",)
    assert ingest.index_settings("").urls == (ingest.DEFAULT_INDEX,)


# --- de-duplication in the form validation compares ------------------------------------------------

def test_deduplicate_counts_exact_normalised_and_conflicting_rows():
    frame = pd.DataFrame({"text": ["Great film", "great  FILM", "Great film", "Bad plot", " bad PLOT ", "Fine", None,
                                   None, "", " ", " "],
                          "label": ["pos", "pos", "pos", "neg", "pos", "pos", "neg", "neg", "pos", "neg", "neg"]})
    kept, dropped = ingest.deduplicate(frame)
    # Empty texts stay (but for exact copies) for the validate stage to count and refuse.
    assert kept["text"].fillna("<null>").tolist() == ["Great film", "Fine", "<null>", "", " "]
    assert dropped == {"exact": 3, "normalised": 1, "conflicting_labels": 2}


def test_ingest_output_passes_validations_overlap_check(tmp_path):
    variants = pd.concat([pd.DataFrame({"text": [f"Great film{s}", f"great  FILM{s}", f"GREAT FILM {s}",
                                                 f"Bad plot{s}", f"bad plot{s}"],
                                        "label": ["positive"] * 3 + ["negative", "positive"]})
                          for s in ("", " x", " y", " z")])
    shouted = make_frame(30).assign(text=lambda f: f["text"].str.upper())  # 60 case-only duplicates
    frame = pd.concat([make_frame(30), variants, shouted], ignore_index=True)
    src = tmp_path / "data.csv"
    frame.to_csv(src, index=False)
    ingest.run(DataConfig(source=str(src)), tmp_path / "out", NullTracker(), root=tmp_path)
    splits = {name: pd.read_parquet(tmp_path / "out" / f"{name}.parquet") for name in ingest.SPLITS}
    train_keys = set(splits["train"]["text"].map(validate.text_key))
    for name in ("validation", "test"):
        assert not validate.rows_frame(splits[name], train_keys)["in_train"].any(), name
    keys = [df["text"].map(text_key).tolist() for df in splits.values()]
    assert sum(map(len, keys)) == len(set().union(*keys)) == 60 + 4  # no key twice, in a split or across
    assert not any("bad plot" in key for key in set().union(*keys))
    card = json.loads((tmp_path / "out" / "data_card.json").read_text())
    assert card["duplicates_dropped"] == {"exact": 0, "normalised": 60 + 8}
    assert card["conflicting_labels_dropped"] == 8  # "bad plot" with two labels, in each of 4 variants
