import functools
import http.server
import io
import tarfile
import threading
from pathlib import Path

import pytest

from components.kit import data
from components.kit.hashing import file_sha256


def test_csv_with_quoted_newlines_and_delimiters_is_parsed(tmp_path):
    src = tmp_path / "d.csv"
    src.write_text('text,label\n"a line, with comma\nand newline",pos\n"plain",neg\n')
    frame = data.read_table(src)
    assert frame["text"].tolist() == ["a line, with comma\nand newline", "plain"]


def test_missing_file_and_unknown_format_say_so(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.read_table(tmp_path / "nope.csv")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(data.DataError, match="unsupported data file"):
        data.read_table(tmp_path / "x.txt")


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
    root = f"vaderSentiment-{data.VADER_VERSION}"
    payload = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
    build_system = '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        add_member(tar, f"{root}/pyproject.toml", build_system.encode())
        add_member(tar, f"{root}/backend.py", payload.encode())
        add_member(tar, f"{root}/setup.py", payload.encode())
        add_member(
            tar,
            f"{root}/PKG-INFO",
            f"Metadata-Version: 1.0\nName: vaderSentiment\nVersion: {data.VADER_VERSION}\n".encode(),
        )
        add_member(tar, f"{root}/additional_resources/hutto_ICWSM_2014.tar.gz", inner.getvalue())
    return path


MOVIE = "1\t2.5\tA fine   FILM\n2\t-2.0\tA dull film\n3\t0.1\tA film\n"


@pytest.fixture
def fake_index(tmp_path):
    """A simple-API package index on 127.0.0.1 serving a fake archive (relative link, as PyPI mirrors
    often write them). Yields (index URL, archive path, marker path)."""
    site, marker = tmp_path / "site", tmp_path / "archive-code-ran"
    archive = fake_sdist(
        site / "files" / data.VADER_ARCHIVE,
        marker,
        {
            "movieReviewSnippets": MOVIE,
            "tweets": "1\t0.0\ta fine film\n4\t1.0\tsunny\n",
            "nytEditorialSnippets": "",
            "amazonReviewSnippets": "5\t-1.0\tbroke\n",
        },
    )
    page = site / "simple" / "vadersentiment" / "index.html"  # the project's normalised name (PEP 503)
    page.parent.mkdir(parents=True)
    page.write_text(
        f'<html><body><a href="../../files/{data.VADER_ARCHIVE}#sha256='
        f'{file_sha256(archive)}">{data.VADER_ARCHIVE}</a></body></html>'
    )
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
    with pytest.raises(data.DataError) as caught:
        data.fetch_vader_archive(cache)
    assert not marker.exists(), "code from the archive ran"
    message = str(caught.value)
    assert file_sha256(archive) in message and data.VADER_SHA256 in message, message
    assert not cache.exists() or not any(cache.iterdir()), list(cache.iterdir())


def test_cached_archive_is_checked_before_it_is_opened(tmp_path, monkeypatch):
    cache = tmp_path / "raw"
    cache.mkdir()
    (cache / data.VADER_ARCHIVE).write_bytes(b"not the archive")
    monkeypatch.setattr(data.tarfile, "open", lambda *a, **k: pytest.fail("opened an unverified archive"))
    with pytest.raises(data.DataError, match=f"expected {data.VADER_SHA256}; deleted it unopened"):
        data.fetch_vader_archive(cache, indexes=())
    assert not any(cache.iterdir())


def test_index_settings_follow_pip_precedence():
    listed = (
        "global.cert='/ca.pem'\nglobal.extra-index-url='file:///a/simple file:///b/simple'\n"
        "global.index-url='https://mirror.example/simple'\n"
    )
    assert data.index_settings(listed) == data.IndexSettings(
        ("https://mirror.example/simple", "file:///a/simple", "file:///b/simple"), "/ca.pem"
    )
    overridden = ":env:.extra-index-url=''\n:env:.index-url='http://local/simple'\n" + listed
    assert data.index_settings(overridden).urls == ("http://local/simple",)
    assert data.index_settings("").urls == (data.DEFAULT_INDEX,)


def test_a_lone_punctuation_mark_is_not_read_as_a_sentence(tmp_path):
    ratings = {"movieReviewSnippets": MOVIE, "tweets": "", "nytEditorialSnippets": "", "amazonReviewSnippets": ""}
    ratings["amazonReviewSnippets"] = "1\t0.6\t!\n2\t1.0\tok\n3\t-1.0\t  ?  \n"
    archive = fake_sdist(tmp_path / data.VADER_ARCHIVE, tmp_path / "marker", ratings)
    assert data.read_vader_ratings(archive, "amazonReviewSnippets")["text"].tolist() == ["ok"]
