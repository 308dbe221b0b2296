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
