import json

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from components.classification import trim
from components.kit import vocab
from components.kit.vocab import NotTrimmable, restore_wordpieces, wordpiece_vocab

TRIM_CORPUS = [
    "a wonderful, moving film",
    "terrible pacing and flat jokes",
    "the acting is superb!",
]
# Words the trim corpus never used: the trimmed student reads them as [UNK] or scraps of kept pieces.
NEW_TEXTS = [
    "xylophone quantum zeppelin",
    "a quantum leap for the zeppelin genre",
    "Xylophones everywhere, unbelievably charming",
]
OLD_TEXTS = ["a moving film and flat jokes", "the acting is superb", "terrible, wonderful!"]


@pytest.fixture(scope="module")
def student(tiny_model_dir, tmp_path_factory):
    """A trimmed copy of the tiny model, with a metrics.json of its own, as a stage would leave it."""
    out = tmp_path_factory.mktemp("student") / "model"
    trim.trim(tiny_model_dir, TRIM_CORPUS, out)
    (out / "metrics.json").write_text(json.dumps({"accuracy": 0.5}))
    return out


@pytest.fixture(scope="module")
def restored(student, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("restored") / "model"
    return out, restore_wordpieces(student, tiny_model_dir, NEW_TEXTS, out)


def embeddings(model_dir):
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True)
    return model.get_input_embeddings().weight.detach().clone()


def logits(model_dir, texts):
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True).eval()
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return model(**batch).logits.numpy(), batch["input_ids"].tolist()


# ---------------------------------------------------------------- the moved helpers


def test_trim_still_exposes_the_helpers():
    names = ["NotTrimmable", "used_token_ids", "wordpiece_vocab", "trimmed_tokenizer_json", "remap_added_tokens"]
    for name in names + ["trim_embeddings"]:
        assert getattr(trim, name) is getattr(vocab, name)


def test_used_token_ids_holds_specials_and_pieces(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = vocab.used_token_ids(tok, ["quantum film"])
    assert ids == sorted(ids)
    assert set(tok.all_special_ids) <= set(ids)
    assert set(tok("quantum film", add_special_tokens=False)["input_ids"]) <= set(ids)


def test_used_token_ids_respects_max_length(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = vocab.used_token_ids(tok, ["quantum zeppelin film"], max_length=1)
    assert tok.convert_tokens_to_ids("quantum") in ids
    assert tok.convert_tokens_to_ids("zeppelin") not in ids


def test_wordpiece_vocab_is_indexed_by_id(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokens = wordpiece_vocab(tok)
    assert len(tokens) == 30522
    assert tokens[tok.cls_token_id] == "[CLS]" and tokens[tok.convert_tokens_to_ids("film")] == "film"


def test_wordpiece_vocab_rejects_other_models(tiny_lm_data_dir):
    bpe = AutoTokenizer.from_pretrained(tiny_lm_data_dir / "tokenizer")
    with pytest.raises(NotTrimmable, match="WordPiece"):
        wordpiece_vocab(bpe)


# ---------------------------------------------------------------- restore_wordpieces


def test_trimmed_student_cannot_read_the_new_texts(student, tiny_model_dir):
    """The premise of the tests below: before restoring, the student splits the new words differently."""
    teacher, small = AutoTokenizer.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(student)
    assert any(small.tokenize(t) != teacher.tokenize(t) for t in NEW_TEXTS)


def test_restored_student_splits_text_like_the_teacher(restored, tiny_model_dir):
    out, _ = restored
    teacher, grown = AutoTokenizer.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(out)
    kept = np.load(out / "kept_token_ids.npy")
    for text in NEW_TEXTS + TRIM_CORPUS:
        assert grown.tokenize(text) == teacher.tokenize(text)
        # The ids map back to the teacher's through kept_token_ids, specials included.
        assert kept[grown(text)["input_ids"]].tolist() == teacher(text)["input_ids"]
        assert grown.unk_token_id not in grown(text)["input_ids"]


def test_restore_reports_what_it_added(restored, student):
    out, report = restored
    before = len(AutoTokenizer.from_pretrained(student))
    assert report["vocab_before"] == before
    assert report["added"] > 0 and report["vocab_after"] == before + report["added"]
    assert report["added_pieces"] == wordpiece_vocab(AutoTokenizer.from_pretrained(out))[before:][:20]
    assert {"quantum", "zeppelin"} <= set(report["added_pieces"])
    assert len(AutoTokenizer.from_pretrained(out)) == report["vocab_after"]
    assert AutoConfig.from_pretrained(out).vocab_size == report["vocab_after"]


def test_added_pieces_are_capped_at_twenty(student, tiny_model_dir, tmp_path):
    words = "xylophone quantum zeppelin aardvark bassoon cathedral dolphin euphoria falcon glacier harpsichord"
    more = words + " iguana jasmine kaleidoscope labyrinth meteor nebula obelisk pelican quartz rhubarb saxophone"
    report = restore_wordpieces(student, tiny_model_dir, [more], tmp_path / "model")
    assert report["added"] > 20 and len(report["added_pieces"]) == 20


def test_appended_rows_are_the_teachers_and_old_rows_unchanged(restored, student, tiny_model_dir):
    out, report = restored
    old, grown, teacher = embeddings(student), embeddings(out), embeddings(tiny_model_dir)
    before = report["vocab_before"]
    assert grown.shape == (report["vocab_after"], old.shape[1])
    torch.testing.assert_close(grown[:before], old, rtol=0, atol=0)
    kept = torch.as_tensor(np.load(out / "kept_token_ids.npy"))
    torch.testing.assert_close(grown[before:], teacher[kept[before:]], rtol=0, atol=0)


def test_outputs_on_old_text_are_unchanged(restored, student):
    out, _ = restored
    old_logits, old_ids = logits(student, OLD_TEXTS)
    new_logits, new_ids = logits(out, OLD_TEXTS)
    assert new_ids == old_ids
    np.testing.assert_allclose(new_logits, old_logits, rtol=0, atol=1e-6)


def test_special_token_ids_keep_their_numbers(restored, student):
    out, _ = restored
    old, grown = AutoTokenizer.from_pretrained(student), AutoTokenizer.from_pretrained(out)
    assert grown.all_special_ids == old.all_special_ids
    assert AutoConfig.from_pretrained(out).pad_token_id == AutoConfig.from_pretrained(student).pad_token_id


def test_kept_ids_and_vocab_txt_follow_the_vocabulary(restored, student, tiny_model_dir):
    out, report = restored
    kept = np.load(out / "kept_token_ids.npy")
    old_kept = np.load(student / "kept_token_ids.npy")
    assert len(kept) == report["vocab_after"] and len(set(kept.tolist())) == len(kept)
    np.testing.assert_array_equal(kept[: len(old_kept)], old_kept)
    teacher_tokens = wordpiece_vocab(AutoTokenizer.from_pretrained(tiny_model_dir))
    grown_tokens = wordpiece_vocab(AutoTokenizer.from_pretrained(out))
    assert grown_tokens == [teacher_tokens[i] for i in kept]
    assert (out / "vocab.txt").read_text().splitlines() == grown_tokens
    slow = AutoTokenizer.from_pretrained(out, use_fast=False)  # reads vocab.txt, not tokenizer.json
    assert [slow.tokenize(t) for t in NEW_TEXTS] == [AutoTokenizer.from_pretrained(out).tokenize(t) for t in NEW_TEXTS]


def test_other_files_are_copied(restored, student):
    out, _ = restored
    for name in ("labels.json", "metrics.json", "special_tokens_map.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (student / name).read_bytes()


def test_restoring_again_adds_nothing(restored, tiny_model_dir, tmp_path):
    out, report = restored
    again = restore_wordpieces(out, tiny_model_dir, NEW_TEXTS, tmp_path / "model")
    assert again == {
        "added": 0,
        "vocab_before": report["vocab_after"],
        "vocab_after": report["vocab_after"],
        "added_pieces": [],
    }
    np.testing.assert_array_equal(
        np.load(tmp_path / "model" / "kept_token_ids.npy"), np.load(out / "kept_token_ids.npy")
    )


def test_texts_the_student_already_covers_add_nothing(student, tiny_model_dir, tmp_path):
    report = restore_wordpieces(student, tiny_model_dir, OLD_TEXTS, tmp_path / "model")
    assert report["added"] == 0 and report["vocab_after"] == report["vocab_before"]
    torch.testing.assert_close(embeddings(tmp_path / "model"), embeddings(student), rtol=0, atol=0)


def test_max_length_limits_the_pieces_looked_at(student, tiny_model_dir, tmp_path):
    report = restore_wordpieces(student, tiny_model_dir, ["quantum zeppelin"], tmp_path / "model", max_length=1)
    assert report["added_pieces"] == ["quantum"]


def test_untrimmed_student_is_copied_unchanged(tiny_model_dir, tmp_path):
    out = tmp_path / "model"
    report = restore_wordpieces(tiny_model_dir, tiny_model_dir, NEW_TEXTS, out)
    assert report == {"added": 0, "vocab_before": 30522, "vocab_after": 30522, "added_pieces": []}
    source = sorted(p.name for p in tiny_model_dir.iterdir())
    assert sorted(p.name for p in out.iterdir()) == source
    for name in source:
        assert (out / name).read_bytes() == (tiny_model_dir / name).read_bytes()


def test_out_dir_is_replaced_and_no_temporary_folder_is_left(student, tiny_model_dir, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier run")
    restore_wordpieces(student, tiny_model_dir, NEW_TEXTS, out)
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_student_not_trimmed_from_the_teacher_is_refused(student, tiny_model_dir, tmp_path):
    import shutil

    wrong = tmp_path / "wrong"
    shutil.copytree(student, wrong)
    kept = np.load(wrong / "kept_token_ids.npy")
    np.save(wrong / "kept_token_ids.npy", kept[::-1].copy())  # ids that name other pieces
    with pytest.raises(ValueError, match="not trimmed from the teacher"):
        restore_wordpieces(wrong, tiny_model_dir, NEW_TEXTS, tmp_path / "model")
    assert not (tmp_path / "model").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wrong"]
