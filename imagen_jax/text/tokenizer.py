"""Tokenizers for the T5 encoder, from a local Hugging Face directory, and our own sentencepiece.

`Tokenizer.from_directory(path)` reads what a Hugging Face T5 checkpoint ships: `tokenizer.json`
and/or `tokenizer_config.json` (through `transformers.AutoTokenizer`), or a bare `spiece.model`
(through `transformers.T5Tokenizer`). Nothing is downloaded.

Prompts are padded to a fixed `max_length` (128 by default, as Imagen) so that the encoder compiles
once. A prompt longer than that is truncated, and that is never silent: every batch carries a
per-prompt `truncated` flag and a warning names how many prompts were cut and the longest length.
An optional `preprocess` rewrites each prompt first (DeepFloyd IF's lower-cases and strips it).

`train_sentencepiece(captions, out_dir)` trains a small unigram model on a dataset's captions and
writes it in the same Hugging Face layout, so that the embedded tiny default goes through exactly the
loading path a real checkpoint does.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 128


@dataclasses.dataclass(frozen=True)
class TokenizedBatch:
  """Token ids (batch, max_length) int32, mask (batch, max_length) bool, truncated (batch,) bool,
  and lengths (batch,) of each prompt before truncation (in tokens, including the end token)."""

  input_ids: np.ndarray
  attention_mask: np.ndarray
  truncated: np.ndarray
  lengths: np.ndarray


class Tokenizer:
  """A Hugging Face tokenizer with fixed-length padding and truncation reporting."""

  def __init__(self, hf_tokenizer, max_length: int = DEFAULT_MAX_LENGTH,
               preprocess: Callable[[str], str] | None = None):
    if max_length < 1:
      raise ValueError(f"max_length must be positive, got {max_length}")
    self.hf = hf_tokenizer
    self.max_length = max_length
    self.preprocess = preprocess

  @classmethod
  def from_directory(cls, path: str | os.PathLike, max_length: int = DEFAULT_MAX_LENGTH
                     ) -> Tokenizer:
    path = Path(path)
    if not path.is_dir():
      raise FileNotFoundError(f"tokenizer directory {path} does not exist; point the config at a "
                              "local Hugging Face T5 checkpoint directory (with spiece.model or "
                              "tokenizer.json)")
    import transformers  # deferred: importing transformers costs seconds

    if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
      hf = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    elif (path / "spiece.model").is_file():
      hf = transformers.T5Tokenizer.from_pretrained(str(path), local_files_only=True)
    else:
      found = sorted(p.name for p in path.iterdir())
      raise FileNotFoundError(f"no tokenizer in {path}: expected tokenizer.json, "
                              f"tokenizer_config.json or spiece.model; found {found}")
    if hf.pad_token_id is None:
      raise ValueError(f"the tokenizer in {path} defines no padding token; T5 tokenizers use "
                       "<pad> = 0")
    return cls(hf, max_length)

  @property
  def vocab_size(self) -> int:
    return len(self.hf)

  def __call__(self, texts: Sequence[str], warn: bool = True) -> TokenizedBatch:
    """Tokenize, pad to max_length, truncate (keeping </s>); `warn` logs truncations (callers that
    aggregate them over many batches, like `imagen-jax encode`, report them themselves)."""
    if isinstance(texts, str):
      raise TypeError("pass a list of prompts, not a single string")
    texts = [self.preprocess(t) for t in texts] if self.preprocess else list(texts)
    full = self.hf(texts, add_special_tokens=True, truncation=False)["input_ids"]
    lengths = np.array([len(ids) for ids in full], np.int32)
    truncated = lengths > self.max_length
    ids = np.full((len(texts), self.max_length), self.hf.pad_token_id, np.int32)
    mask = np.zeros((len(texts), self.max_length), bool)
    eos = self.hf.eos_token_id
    for i, seq in enumerate(full):
      if truncated[i]:  # keep the end token, as HF's truncation does
        seq = seq[: self.max_length - 1] + ([eos] if eos is not None else seq[self.max_length - 1:])
      ids[i, : len(seq)] = seq
      mask[i, : len(seq)] = True
    if warn and truncated.any():
      log.warning("%d of %d prompts are longer than max_length=%d tokens (longest: %d) and were "
                  "truncated", int(truncated.sum()), len(texts), self.max_length,
                  int(lengths.max()))
    return TokenizedBatch(ids, mask, truncated, lengths)


def train_sentencepiece(captions: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = 512,
                        max_sentences: int = 1_000_000, seed: int = 0) -> Path:
  """Train a unigram sentencepiece model on `captions`; write a Hugging Face T5 tokenizer directory.

  Special ids follow T5: <pad> = 0, </s> = 1, <unk> = 2 (no BOS, no sentinel extra ids). The vocab
  size is a soft limit: a small caption set yields fewer pieces rather than an error. The directory
  is written atomically (a temporary directory renamed into place). Returns `out_dir`.

  The model is completed with the captions' whole words (`_complete_with_words`): on a small,
  repetitive caption set sentencepiece's unigram trainer prunes most words to characters.
  """
  import sentencepiece as spm
  import transformers

  captions = [c for c in captions if c and c.strip()]
  if not captions:
    raise ValueError("no non-empty captions to train the tokenizer on")
  out_dir = Path(out_dir)
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  model = io.BytesIO()
  spm.set_random_generator_seed(seed)  # the sentence sample below is then reproducible
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(captions), model_writer=model, vocab_size=vocab_size,
      model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
      hard_vocab_limit=False, input_sentence_size=max_sentences, shuffle_input_sentence=True,
      num_threads=1, minloglevel=2)
  proto = _complete_with_words(model.getvalue(), captions, vocab_size)
  tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
  try:
    (tmp / "spiece.model").write_bytes(proto)
    hf = transformers.T5Tokenizer.from_pretrained(str(tmp), extra_ids=0, local_files_only=True)
    hf.save_pretrained(str(tmp))
    if out_dir.exists():
      shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return out_dir


def _complete_with_words(model_proto: bytes, captions: Sequence[str], vocab_size: int) -> bytes:
  """Add every caption word the model lacks as a piece of its own, within `vocab_size` pieces.

  sentencepiece's unigram trainer (0.2.x) keeps only 43 pieces of the `shapes` captions, whatever
  the vocab size: "a small red circle" became ▁a ▁s m a ll ▁ re d ▁circle </s>, so a colour or size
  was three to five character tokens that the (random, frozen) tiny T5 cannot compose, and two-
  object captions ran to 32 tokens. A unigram model whose vocabulary holds every word has its
  maximum-likelihood optimum at whole words scored by log frequency; that is what is added here,
  the most frequent words first, each scored log(count / total words). The trained pieces stay
  (characters and fragments: unknown words still tokenize), and so does the trainer's normaliser,
  so the file is an ordinary unigram `spiece.model` that sentencepiece and Hugging Face's
  tokenizers segment identically (Viterbi: a known word is one piece).
  """
  from collections import Counter

  from sentencepiece import sentencepiece_model_pb2

  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString(model_proto)
  have = {p.piece for p in proto.pieces}
  counts = Counter("\u2581" + w for c in captions for w in c.split())
  total = sum(counts.values())
  room = max(0, vocab_size - len(proto.pieces))
  new = sorted((w for w in counts if w not in have), key=lambda w: (-counts[w], w))[:room]
  for word in new:
    piece = proto.pieces.add()
    piece.piece, piece.score = word, math.log(counts[word] / total)
    piece.type = sentencepiece_model_pb2.ModelProto.SentencePiece.NORMAL
  proto.trainer_spec.vocab_size = len(proto.pieces)
  return proto.SerializeToString()
