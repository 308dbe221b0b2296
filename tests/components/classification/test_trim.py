import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from components.classification import trim

CORPUS = [
    "a wonderful, moving film",
    "terrible pacing and flat jokes",
    "the acting is superb!",
    "boring boring boring",
    "unbelievably charming",
]


@pytest.fixture(scope="module")
def trimmed(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("trimmed") / "model"
    kept = trim.trim(tiny_model_dir, CORPUS, out)
    return out, kept


def logits(model_dir, texts):
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return model(**batch).logits.numpy(), batch["input_ids"], tok


def test_trim_keeps_specials_and_used_pieces_only(trimmed):
    out, kept = trimmed
    assert kept["vocab_before"] == 30522 and kept["vocab_after"] < 100
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == kept["vocab_after"]
    for special in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"):
        assert tok.convert_tokens_to_ids(special) != tok.unk_token_id or special == "[UNK]"
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.get_input_embeddings().num_embeddings == kept["vocab_after"]


def test_trimmed_model_matches_original_on_in_vocabulary_text(tiny_model_dir, trimmed):
    out, _ = trimmed
    texts = ["a moving film and flat jokes", "the acting is superb", "boring, charming!"]
    original, original_ids, original_tok = logits(tiny_model_dir, texts)
    small, small_ids, small_tok = logits(out, texts)
    np.testing.assert_allclose(original, small, atol=1e-6)
    # Same pieces, new numbering.
    for a, b in zip(original_ids.tolist(), small_ids.tolist()):
        assert original_tok.convert_ids_to_tokens(a) == small_tok.convert_ids_to_tokens(b)


def test_unseen_words_have_a_defined_result(trimmed):
    out, _ = trimmed
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("zyzzyva quantum")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert all(0 <= i < len(tok) for i in ids)
    assert tok.unk_token_id in ids
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.inference_mode():
        assert torch.isfinite(model(input_ids=torch.tensor([ids])).logits).all()


def test_trimmed_tokenizer_keeps_normalisation(trimmed):
    out, _ = trimmed
    tok = AutoTokenizer.from_pretrained(out)
    assert tok("WONDERFUL Film")["input_ids"] == tok("wonderful film")["input_ids"]


# ---------------------------------------------------------------- rare pieces cut, measured on validation


def test_rare_cut_keeps_frequent_pieces_specials_and_the_characters_that_spell_the_rest(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    train = ["boring film", "boring plot", "a wonderful film"]
    keep = set(trim.rare_cut_ids(tok, train, min_count=2))
    vocab = tok.get_vocab()
    assert {vocab["boring"], vocab["film"]} <= keep and vocab["wonderful"] not in keep
    assert set(tok.all_special_ids) <= keep
    assert {vocab["w"], vocab["##w"], vocab["##l"]} <= keep  # characters of the train texts, both forms
    assert vocab.get("q") not in keep  # no "q" in the train texts
    small, small_tok = trim.trimmed_in_memory(
        AutoModelForSequenceClassification.from_pretrained(tiny_model_dir), tok, sorted(keep)
    )
    ids = small_tok("a wonderful film")["input_ids"]
    assert small_tok.convert_tokens_to_ids("[UNK]") not in ids  # spelled from kept pieces, not unknown
    assert small.get_input_embeddings().num_embeddings == len(keep) == len(small_tok)


def test_choose_cut_steps_down_until_validation_is_within_the_allowance(tiny_model_dir, tiny_prepared, monkeypatch):
    from components.config import TrimConfig

    scores = iter([0.90, 0.80, 0.897])  # untrimmed, min_count 3 (10 points lost), min_count 2 (0.3 lost)
    monkeypatch.setattr(trim, "validation_score", lambda *a, **k: next(scores))
    keep, record = trim.choose_cut(TrimConfig(min_count=3, max_drop_points=0.5), tiny_model_dir, tiny_prepared, 32)
    assert record["min_count"] == 2 and [t["min_count"] for t in record["tried"]] == [3, 2]
    assert record["allowance_points"] == 0.5 and record["budget_left_points"] is None  # no prune budget here
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    import pandas as pd

    train = pd.read_parquet(tiny_prepared / "train.parquet")["text"].tolist()
    assert keep == trim.rare_cut_ids(tok, train, 2, 32)


def test_choose_cut_measures_every_piece_of_train_last(tiny_model_dir, tiny_prepared, monkeypatch):
    from components.config import TrimConfig

    scores = iter([0.90, 0.70, 0.899])  # untrimmed, min_count 2 (20 points lost), min_count 1 (0.1 lost)
    monkeypatch.setattr(trim, "validation_score", lambda *a, **k: next(scores))
    keep, record = trim.choose_cut(TrimConfig(min_count=2, max_drop_points=0.5), tiny_model_dir, tiny_prepared, 32)
    import pandas as pd

    train = pd.read_parquet(tiny_prepared / "train.parquet")["text"].tolist()
    assert record["min_count"] == 1 and [t["min_count"] for t in record["tried"]] == [2, 1]
    assert keep == trim.rare_cut_ids(AutoTokenizer.from_pretrained(tiny_model_dir), train, 1, 32)


def test_when_no_cut_fits_the_vocabulary_is_kept_whole(tiny_model_dir, tiny_prepared, tmp_path, monkeypatch):
    import json

    from components.config import TrimConfig
    from components.kit.tracking import NullTracker

    scores = iter([0.90, 0.70, 0.88])  # even every piece of train loses 2 points on validation
    monkeypatch.setattr(trim, "validation_score", lambda *a, **k: next(scores))
    out = tmp_path / "trimmed"
    result = trim.run(
        TrimConfig(min_count=2, max_drop_points=0.5), tiny_model_dir, tiny_prepared, out, NullTracker(), 32
    )
    assert result.metrics == {"trimmed": 0.0}
    record = json.loads((out / trim.TRIM_FILE).read_text())
    assert record["min_count"] is None and [t["min_count"] for t in record["tried"]] == [2, 1]
    size = AutoModelForSequenceClassification.from_pretrained(out).get_input_embeddings().num_embeddings
    assert size == len(AutoTokenizer.from_pretrained(tiny_model_dir))


def test_the_prune_budget_left_caps_the_allowance(tiny_model_dir, tmp_path):
    import json
    import shutil

    folder = tmp_path / "pruned"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "metrics.json").write_text(json.dumps({"budget_points": 1.25, "teacher_val_accuracy": 0.87}))
    assert trim.budget_left(folder, 0.86) == pytest.approx(0.25)  # one point of 1.25 already spent
    assert trim.budget_left(tiny_model_dir, 0.86) is None


def test_the_stage_writes_what_it_measured(tiny_model_dir, tiny_prepared, tmp_path):
    import json

    from components.config import TrimConfig
    from components.kit.tracking import NullTracker

    out = tmp_path / "trimmed"
    result = trim.run(
        TrimConfig(min_count=2, max_drop_points=100.0), tiny_model_dir, tiny_prepared, out, NullTracker(), 32
    )
    record = json.loads((out / trim.TRIM_FILE).read_text())
    assert record["min_count"] == 2 and result.metrics["min_count"] == 2.0
    assert record["vocab_after"] == record["tried"][0]["vocab"] < record["vocab_before"]
    assert 0.0 <= record["untrimmed_val"] <= 1.0
