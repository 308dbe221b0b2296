"""Bad data stops the run with a message naming the file and the problem, writes no prepared split and
registers nothing.

Files that cannot be read as what they claim to be (not UTF-8, empty, cut off, the wrong format, a CSV row
with a stray delimiter, texts or labels of the wrong type, mostly duplicates, outside the workspace) are a
`DataError` from ingest (the CLI exits 2); readable data with bad content (a missing column, one class,
unknown labels, empty or over-long texts, texts shared by train and test) fails the
validate stage's checks (`ValidationFailed`, exit 3). Near duplicates (case or spacing apart) are not a
failure: ingest drops them with the comparison validation uses, so the splits it makes always pass it.
The causal-LM corpus reader applies the same read checks and path rule. Each case runs at component level; two run `miniaturize run` in a throwaway project.

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q tests/reliability/test_bad_data.py
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest

from components import validate
from components.causal_lm import data as lm_data
from components.classification import ingest
from components.config import SPLITS, DataConfig, ValidateConfig
from components.kit.data import DataError
from components.kit.tracking import NullTracker
from components.validate import ValidationFailed
from tests.conftest import make_frame, write_prepared
from tests.flows.conftest import make_project, run_cli

GOOD = make_frame(40)  # 80 distinct reviews, half positive, half negative
LABELS = ["negative", "positive"]


def csv_bytes(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def jsonl_bytes(frame: pd.DataFrame) -> bytes:
    return frame.to_json(orient="records", lines=True).encode()


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def put(root: Path, name: str, content: bytes) -> Path:
    path = root / "data" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def ingest_file(root: Path, source: str, **data) -> None:
    cfg = DataConfig(source=source, **data)
    ingest.run(cfg, root / "data" / "prepared", NullTracker(), cache_dir=root / "data" / "raw", root=root)


def prepared_rows(root: Path) -> list[tuple[str, str]]:
    splits = [pd.read_parquet(root / "data" / "prepared" / f"{name}.parquet") for name in SPLITS]
    return sorted(pd.concat(splits).itertuples(index=False, name=None))


# --- files ingest cannot read: DataError naming the file and the problem -------------------------------

HEADER = b"text,label\n"
BODY = csv_bytes(GOOD)[len(HEADER) :]

READ_CASES = [
    (
        "not UTF-8",
        "reviews.csv",
        HEADER + b"fine text,positive\ncaf\xe9 au lait,negative\n",
        "is not valid UTF-8: byte 0xe9 at offset 33 (line 3)",
    ),
    ("empty csv", "reviews.csv", b"", "is empty (0 bytes)"),
    ("empty parquet", "reviews.parquet", b"", "is empty (0 bytes)"),
    ("blank jsonl", "reviews.jsonl", b"\n  \n", "is empty (4 bytes of whitespace)"),
    ("header only", "reviews.csv", HEADER, "has no rows"),
    (
        "parquet cut in half",
        "reviews.parquet",
        parquet_bytes(GOOD)[: len(parquet_bytes(GOOD)) // 2],
        "is truncated: it starts like Parquet but has no Parquet footer",
    ),
    (
        "jsonl last line cut",
        "reviews.jsonl",
        jsonl_bytes(GOOD)[:-12],
        "line 80 is not valid JSON at column 55 (Expecting value); the file looks cut off",
    ),
    (
        "csv cut in a quoted text",
        "reviews.csv",
        HEADER + BODY + b'"an unfinished, quoted',
        "is not valid CSV at line 82: unexpected end of data",
    ),
    (
        "csv cut in a row",
        "reviews.csv",
        HEADER + BODY + b"a last row without its label\n",
        "line 82 has 1 field, the header (text,label) has 2: the file looks cut off",
    ),
    ("csv named parquet", "reviews.parquet", csv_bytes(GOOD), "is not a Parquet file: it starts like text"),
    ("parquet named csv", "reviews.csv", parquet_bytes(GOOD), "is not a CSV file: it starts like Parquet"),
    (
        "json array named jsonl",
        "reviews.jsonl",
        GOOD.to_json(orient="records").encode(),
        "is not a JSON Lines file: it starts like a JSON array",
    ),
    (
        "utf-16 csv",
        "reviews.csv",
        csv_bytes(GOOD).decode().encode("utf-16"),
        "is not a CSV file: it starts like UTF-16 text",
    ),
    # The first data row is where pandas would silently turn the extra field into an index column.
    (
        "stray comma in first row",
        "reviews.csv",
        HEADER + b"hello, world,negative\n" + BODY,
        "line 2 has 3 fields, the header (text,label) has 2: an unquoted comma? quote texts that contain commas",
    ),
    (
        "stray comma later",
        "reviews.csv",
        HEADER + BODY + b"dull, long,negative\nfine,positive\n",
        "line 82 has 3 fields, the header (text,label) has 2: an unquoted comma?",
    ),
    (
        "float labels",
        "reviews.jsonl",
        jsonl_bytes(GOOD.assign(label=[1.0, 0.0] * 40)),
        "column 'label' must hold str or int values, but 80 of 80 rows hold float (row 0: 1.0)",
    ),
    (
        "list labels",
        "reviews.parquet",
        parquet_bytes(GOOD.assign(label=[["positive"], ["negative"]] * 40)),
        "column 'label' must hold str or int values, but 80 of 80 rows hold list",
    ),
    (
        "number texts",
        "reviews.jsonl",
        jsonl_bytes(GOOD.assign(text=range(80))),
        "column 'text' must hold str values, but 80 of 80 rows hold int (row 0: 0)",
    ),
    (
        "heavy duplication",
        "reviews.csv",
        csv_bytes(pd.concat([GOOD] + [GOOD.head(10)] * 5)),
        "50 of 130 rows (38%) repeat an earlier row's text, more than data.max_duplicate_share 20%",
    ),
]


@pytest.mark.parametrize("name, content, needle", [c[1:] for c in READ_CASES], ids=[c[0] for c in READ_CASES])
def test_unreadable_files_stop_ingest_before_anything_is_written(tmp_path, name, content, needle):
    put(tmp_path, name, content)
    with pytest.raises(DataError) as caught:
        ingest_file(tmp_path, f"data/{name}")
    message = str(caught.value)
    assert needle in message and f"data/{name}" in message, message
    assert not (tmp_path / "data" / "prepared").exists()


def test_integer_labels_are_read_as_label_names(tmp_path):
    put(tmp_path, "reviews.jsonl", jsonl_bytes(GOOD.assign(label=[1, 0] * 40)))
    ingest_file(tmp_path, "data/reviews.jsonl")
    assert {label for _, label in prepared_rows(tmp_path)} == {"0", "1"}


def test_quoted_newlines_commas_and_quotes_come_out_as_written(tmp_path):
    path = put(
        tmp_path,
        "reviews.csv",
        HEADER + b'"a line, with a comma\nand a newline",positive\n'
        b'"she said ""no"", twice",negative\n\nplain,positive\n',
    )
    assert ingest.read_table(path).to_dict("records") == [
        {"text": "a line, with a comma\nand a newline", "label": "positive"},
        {"text": 'she said "no", twice', "label": "negative"},
        {"text": "plain", "label": "positive"},
    ]
    tricky = GOOD.copy()
    tricky.loc[:2, "text"] = ["two\nlines, and a comma", 'a "quoted" word', "tab\tand, comma\r\nand CRLF"]
    put(tmp_path, "tricky.csv", csv_bytes(tricky))
    ingest_file(tmp_path, "data/tricky.csv")
    assert prepared_rows(tmp_path) == sorted(tricky.itertuples(index=False, name=None))


# --- where the file is: inside the workspace, or refused -----------------------------------------------


@pytest.mark.parametrize("how", ["dot-dot", "absolute", "symlink"])
def test_a_data_file_outside_the_workspace_is_refused(tmp_path, how):
    root = tmp_path / "project"
    outside = tmp_path / "reviews.jsonl"
    outside.write_bytes(jsonl_bytes(GOOD))
    source = {"dot-dot": "../reviews.jsonl", "absolute": str(outside), "symlink": "data/reviews.jsonl"}[how]
    (root / "data").mkdir(parents=True)
    if how == "symlink":
        (root / "data" / "reviews.jsonl").symlink_to(outside)
    for load in (lambda: ingest_file(root, source), lambda: lm_data.load_corpus(source, root / "data" / "raw", root)):
        with pytest.raises(DataError, match=r"escapes the workspace .*Copy it under .*/data .*`dvc add`.*`dvc import`"):
            load()
    assert not (root / "data" / "prepared").exists()


def test_a_symlink_within_the_workspace_and_an_absolute_path_inside_are_fine(tmp_path):
    put(tmp_path, "v2/reviews.csv", csv_bytes(GOOD))
    (tmp_path / "data" / "reviews.csv").symlink_to(tmp_path / "data" / "v2" / "reviews.csv")
    ingest_file(tmp_path, "data/reviews.csv")
    ingest_file(tmp_path, str(tmp_path / "data" / "v2" / "reviews.csv"))
    assert len(prepared_rows(tmp_path)) == 80


def test_a_missing_file_says_so(tmp_path):
    with pytest.raises(DataError, match=r"data file .*data/nope\.csv does not exist"):
        ingest_file(tmp_path, "data/nope.csv")
    with pytest.raises(DataError, match="'data/nope.txt' is not 'vader-all', 'gutenberg' or an existing file"):
        lm_data.load_corpus("data/nope.txt", tmp_path / "raw", tmp_path)


# --- readable data with bad content: the validate stage's checks (exit 3) ------------------------------


def with_texts(texts: list[str]) -> pd.DataFrame:
    frame = GOOD.copy()
    frame.loc[: len(texts) - 1, "text"] = texts
    return frame


CONTENT_CASES = [
    (
        "missing text column",
        GOOD.drop(columns=["text"]),
        {},
        "train: schema on column 'text' (expect_column_to_exist): column is missing",
    ),
    (
        "missing label column",
        GOOD.drop(columns=["label"]),
        {},
        "train: schema on column 'label' (expect_column_to_exist): column is missing",
    ),
    (
        "one class",
        GOOD.assign(label="positive"),
        {},
        "train: distinct_labels on column 'label' (expect_column_unique_value_count_to_be_between): "
        "1 distinct labels, need at least 2",
    ),
    (
        "labels outside the set",
        GOOD.assign(label=["positive", "negative", "neutral", "positive"] * 20),
        {"labels": LABELS},
        "row(s) with a label outside the expected set ['negative', 'positive']",
    ),
    (
        "empty and whitespace texts",
        with_texts(["", " ", "\t", " \n "]),
        {},
        "row(s) with a text outside 2..1000 chars after stripping: 4 empty or whitespace-only",
    ),
    (
        "texts over max_chars",
        with_texts(["x" * 1001, "y" * 5000]),
        {},
        "row(s) with a text outside 2..1000 chars after stripping: 2 longer than validate.max_chars=1000",
    ),
]


@pytest.mark.parametrize("frame, data, needle", [c[1:] for c in CONTENT_CASES], ids=[c[0] for c in CONTENT_CASES])
def test_bad_content_fails_validation_with_the_check_named(tmp_path, frame, data, needle):
    put(tmp_path, "reviews.csv", csv_bytes(frame))
    ingest_file(tmp_path, "data/reviews.csv", **data)
    with pytest.raises(ValidationFailed) as caught:
        validate.run(
            ValidateConfig(),
            tmp_path / "data" / "prepared",
            tmp_path / "reports",
            NullTracker(),
            expected_labels=data.get("labels"),
        )
    message = str(caught.value)
    assert message.startswith("data validation failed: ") and needle in message, message
    assert caught.value.report_path.is_file()


def test_near_duplicates_are_dropped_by_ingest_and_the_splits_pass_validation(tmp_path):
    put(tmp_path, "reviews.csv", csv_bytes(pd.concat([GOOD, GOOD.assign(text=GOOD["text"].str.upper())])))
    ingest_file(tmp_path, "data/reviews.csv")
    card = json.loads((tmp_path / "data" / "prepared" / "data_card.json").read_text())
    assert card["duplicates_dropped"] == {"exact": 0, "normalised": 80}
    validate.run(
        ValidateConfig(), tmp_path / "data" / "prepared", tmp_path / "reports", NullTracker(), expected_labels=LABELS
    )


def test_texts_shared_by_train_and_test_fail_validation(tmp_path):
    prepared = write_prepared(
        tmp_path / "prepared", {"train": make_frame(24, 0), "validation": make_frame(8, 100), "test": make_frame(8, 0)}
    )
    with pytest.raises(ValidationFailed) as caught:
        validate.run(ValidateConfig(), prepared, tmp_path / "reports", NullTracker(), expected_labels=LABELS)
    assert (
        "test: train_overlap on column 'text' (expect_column_values_to_be_in_set): 16 row(s) whose text "
        "(case-folded) is also in train"
    ) in str(caught.value)


# --- the causal-LM corpus: the same read checks --------------------------------------------------------

TEXTS = pd.DataFrame({"text": [f"the film was good on day {i}" for i in range(40)]})
LM_CASES = [
    (
        "txt not UTF-8",
        "corpus.txt",
        b"a fine first line\ncaf\xe9 au lait\n",
        "is not valid UTF-8: byte 0xe9 at offset 21 (line 2)",
    ),
    ("empty txt", "corpus.txt", b"", "is empty (0 bytes)"),
    ("parquet named txt", "corpus.txt", parquet_bytes(TEXTS), "is not a text file: it starts like Parquet"),
    ("parquet cut in half", "corpus.parquet", parquet_bytes(TEXTS)[:300], "is truncated"),
    ("csv named parquet", "corpus.parquet", csv_bytes(TEXTS), "is not a Parquet file: it starts like text"),
    ("jsonl last line cut", "corpus.jsonl", jsonl_bytes(TEXTS)[:-5], "line 40 is not valid JSON"),
    (
        "number texts",
        "corpus.jsonl",
        jsonl_bytes(pd.DataFrame({"text": range(40)})),
        "corpus.jsonl: column 'text' must hold str values, but 40 of 40 rows hold int",
    ),
]


@pytest.mark.parametrize("name, content, needle", [c[1:] for c in LM_CASES], ids=[c[0] for c in LM_CASES])
def test_unreadable_corpus_files_stop_lm_ingest(tmp_path, name, content, needle):
    put(tmp_path, name, content)
    with pytest.raises(DataError) as caught:
        lm_data.load_corpus(f"data/{name}", tmp_path / "raw", tmp_path)
    assert needle in str(caught.value) and f"data/{name}" in str(caught.value), str(caught.value)


# --- the command line: exit code, one line on stderr, nothing written or registered --------------------


def test_cli_unreadable_file_exits_2_and_registers_nothing(tmp_path, prefect_api):
    from mlflow.tracking import MlflowClient

    project = make_project(tmp_path / "project")
    put(project, "reviews.csv", HEADER + b"hello, world,negative\n" + BODY)
    done = run_cli(["run", "--data", "data/reviews.csv"], project, prefect_api, timeout=300)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: data file ") and last.endswith(
        "data/reviews.csv line 2 has 3 fields, the header (text,label) has 2: an unquoted comma? quote texts "
        "that contain commas"
    ), done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "[validate] started" not in done.stdout
    assert not (project / "data" / "prepared").exists() and not (project / "models").exists()
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    assert client.search_registered_models() == []


def test_cli_data_outside_the_project_exits_2_before_anything_runs(tmp_path):
    project = make_project(tmp_path / "project")
    (tmp_path / "reviews.csv").write_bytes(csv_bytes(GOOD))
    (project / "data").mkdir(exist_ok=True)
    (project / "data" / "linked.csv").symlink_to(tmp_path / "reviews.csv")
    for data in ("../reviews.csv", "data/linked.csv"):
        # No Prefect server listens on port 9: the command must stop before it needs one.
        done = run_cli(["run", "--data", data], project, "http://127.0.0.1:9/api", timeout=120)
        assert done.returncode == 2, done.stderr[-2000:]
        assert done.stderr.strip().startswith(f"error: data file {data} (--data) escapes the workspace "), done.stderr
        assert "dvc add" in done.stderr and "Traceback" not in done.stderr
    assert not (project / "data" / "prepared").exists() and not (project / "mlflow.db").exists()
