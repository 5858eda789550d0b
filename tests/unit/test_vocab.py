"""Vocabulary extension (components/vocab.py): words the tokenizer spells as [UNK] get tokens of their own."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def minilm():
    from sentence_transformers import SentenceTransformer

    from components.models import resolve_model

    return resolve_model("minilm", None), SentenceTransformer


def test_unknown_words_finds_only_unk_words_by_frequency(minilm):
    from transformers import AutoTokenizer

    from components.vocab import unknown_words

    tok = AutoTokenizer.from_pretrained(minilm[0])
    texts = ["烤鸭 烤鸭 烤鸭 鸭", "the duck 中 国 国", "北京 饺"]
    # 中/国/北/京 are in MiniLM's vocabulary; 烤 and 鸭 are not; 饺 occurs once.
    assert unknown_words(tok, texts, min_freq=2) == ["鸭", "烤"]
    assert unknown_words(tok, texts, min_freq=1) == ["鸭", "烤", "饺"]
    assert unknown_words(tok, texts, min_freq=1, max_new=1) == ["鸭"]
    assert unknown_words(tok, ["plain english words only"], min_freq=1) == []


def test_byte_level_tokenizer_adds_nothing():
    from components.models import load_tokenizer
    from components.vocab import unknown_words

    tok = load_tokenizer("tiny-qwen3")  # Qwen's byte-level BPE has no unknown token
    assert tok.unk_token_id is None
    assert unknown_words(tok, ["烤鸭 烤鸭 馄饨 馄饨"], min_freq=1) == []


def test_extension_separates_texts_the_base_model_cannot_tell_apart(minilm):
    """Before: 烤鸭 and 馄饨 are both [UNK] [UNK], so they embed identically; after: they differ."""
    from components.vocab import VocabExtension, extend_vocabulary

    path, SentenceTransformer = minilm
    model = SentenceTransformer(path, device="cpu")
    a, b = model.encode(["烤鸭", "馄饨"], convert_to_tensor=True, normalize_embeddings=True)
    assert float(a @ b) > 0.9999

    n_before = model[0].auto_model.get_input_embeddings().weight.shape[0]
    added = extend_vocabulary(model.tokenizer, model[0].auto_model, ["烤鸭 馄饨 烤鸭 馄饨"],
                              VocabExtension(min_freq=2), seed=7)
    assert added == 4
    weight = model[0].auto_model.get_input_embeddings().weight
    assert weight.shape[0] == n_before + 4 == len(model.tokenizer)
    assert model.tokenizer.unk_token_id not in model.tokenizer("烤鸭馄饨")["input_ids"]
    a, b = model.encode(["烤鸭", "馄饨"], convert_to_tensor=True, normalize_embeddings=True)
    assert float(a @ b) < 0.99
    # A query now retrieves the passage that shares its characters.
    q, p1, p2 = model.encode(["烤鸭", "烤鸭 很好吃", "馄饨 很好吃"], convert_to_tensor=True, normalize_embeddings=True)
    assert float(q @ p1) > float(q @ p2)

    # Same seed, same rows: every DDP worker and every rerun builds the same model.
    other = SentenceTransformer(path, device="cpu")
    extend_vocabulary(other.tokenizer, other[0].auto_model, ["烤鸭 馄饨 烤鸭 馄饨"], VocabExtension(min_freq=2), seed=7)
    assert torch.equal(other[0].auto_model.get_input_embeddings().weight[-4:], weight[-4:])
    # New rows look like the old ones (same scale), not zeros.
    old_norm = weight[:n_before].norm(dim=1).mean()
    new_norm = weight[n_before:].norm(dim=1).mean()
    assert 0.5 < float(new_norm / old_norm) < 2.0


def test_saved_model_reloads_with_its_new_tokens(minilm, tmp_path):
    from components.vocab import VocabExtension, extend_vocabulary

    path, SentenceTransformer = minilm
    model = SentenceTransformer(path, device="cpu")
    extend_vocabulary(model.tokenizer, model[0].auto_model, ["烤鸭 烤鸭"], VocabExtension(min_freq=1), seed=1)
    before = model.encode(["烤鸭"], convert_to_tensor=True)
    model.save_pretrained(str(tmp_path / "m"))
    again = SentenceTransformer(str(tmp_path / "m"), device="cpu")
    assert len(again.tokenizer) == len(model.tokenizer)
    assert torch.allclose(again.encode(["烤鸭"], convert_to_tensor=True), before, atol=1e-5)
