"""Tokenizer: our sentencepiece training, the HF directory layout, padding and truncation reporting."""

import logging

import numpy as np
import pytest
import sentencepiece as spm

from imagen_jax.text.tokenizer import Tokenizer, train_sentencepiece

CAPTIONS = [f"a {size} {colour} {shape} to the {side} of a {colour2} {shape2}"
            for size in ("small", "large") for colour in ("red", "green", "blue", "yellow")
            for shape in ("circle", "square", "triangle") for side in ("left", "right")
            for colour2 in ("red", "blue") for shape2 in ("square", "circle")]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
  return train_sentencepiece(CAPTIONS, tmp_path_factory.mktemp("tok") / "tokenizer", vocab_size=64)


def test_layout_and_ids_match_sentencepiece(tok_dir):
  """The written directory is a real HF T5 tokenizer whose ids are the sentencepiece ids + </s>."""
  assert {"spiece.model", "tokenizer_config.json"} <= {p.name for p in tok_dir.iterdir()}
  sp = spm.SentencePieceProcessor(model_file=str(tok_dir / "spiece.model"))
  assert (sp.pad_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2)
  tok = Tokenizer.from_directory(tok_dir, max_length=32)
  batch = tok(["a small red circle", "a large blue square to the left of a red circle"])
  for i, text in enumerate(["a small red circle", "a large blue square to the left of a red circle"]):
    expected = sp.encode(text) + [1]
    n = len(expected)
    np.testing.assert_array_equal(batch.input_ids[i, :n], expected)
    assert batch.attention_mask[i, :n].all() and not batch.attention_mask[i, n:].any()
    assert (batch.input_ids[i, n:] == 0).all()
  assert batch.input_ids.shape == (2, 32) and batch.input_ids.dtype == np.int32
  assert not batch.truncated.any()
  assert "▁circle" in {sp.id_to_piece(i) for i in range(sp.get_piece_size())}


def test_caption_words_are_single_tokens(tok_dir):
  """Every word of the training captions is one piece (sentencepiece's unigram trainer alone
  splits "small" into ▁s m a ll here), Hugging Face segments exactly as sentencepiece does, and an
  unknown word still tokenizes (into characters)."""
  sp = spm.SentencePieceProcessor(model_file=str(tok_dir / "spiece.model"))
  tok = Tokenizer.from_directory(tok_dir, max_length=32)
  words = sorted({w for c in CAPTIONS for w in c.split()})
  pieces = tok.hf.convert_ids_to_tokens(tok.hf(" ".join(words))["input_ids"])
  assert pieces == [f"▁{w}" for w in words] + ["</s>"]
  for text in CAPTIONS[::7] + ["a purple elephant above a tiny red circle", "A RED circle!"]:
    assert tok.hf(text)["input_ids"][:-1] == sp.encode(text), text
  assert len(tok(["a red elephant"]).input_ids[0].nonzero()[0]) > 4


def test_truncation_is_reported_and_matches_hf(tok_dir, caplog):
  texts = ["a red circle", "a large yellow triangle to the right of a blue square"]
  n = len(Tokenizer.from_directory(tok_dir)(texts[:1]).input_ids[0].nonzero()[0])  # incl. </s>
  tok = Tokenizer.from_directory(tok_dir, max_length=n + 1)
  with caplog.at_level(logging.WARNING):
    batch = tok(texts)
  assert batch.truncated.tolist() == [False, True]
  assert batch.lengths[1] > n + 1 and batch.lengths[0] == n
  assert f"1 of 2 prompts are longer than max_length={n + 1}" in caplog.text
  ref = tok.hf(texts, padding="max_length", max_length=n + 1, truncation=True)
  np.testing.assert_array_equal(batch.input_ids, np.asarray(ref["input_ids"]))
  np.testing.assert_array_equal(batch.attention_mask, np.asarray(ref["attention_mask"], bool))
  assert batch.input_ids[1, -1] == 1, "a truncated prompt still ends with </s>"


def test_bare_spiece_model_directory(tok_dir, tmp_path):
  """A directory with only spiece.model (as some T5 releases ship) loads through T5Tokenizer."""
  (tmp_path / "spiece.model").write_bytes((tok_dir / "spiece.model").read_bytes())
  a = Tokenizer.from_directory(tmp_path)(["a small green square"])
  b = Tokenizer.from_directory(tok_dir)(["a small green square"])
  np.testing.assert_array_equal(a.input_ids, b.input_ids)
  assert a.input_ids.shape == (1, 128)


def test_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    Tokenizer.from_directory(tmp_path / "nope")
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(FileNotFoundError, match=r"found \['config.json'\]"):
    Tokenizer.from_directory(tmp_path)
  with pytest.raises(ValueError, match="no non-empty captions"):
    train_sentencepiece(["", "  "], tmp_path / "t")
  with pytest.raises(TypeError, match="list of prompts"):
    Tokenizer(None)("a prompt")
