"""Text encoding: a frozen Flax T5 encoder, Hugging Face checkpoint import/export, tokenizers,
the embedded tiny default, and the text-embedding cache that training reads."""

from imagen_jax.text.cache import CacheError, CacheSpec, EmbeddingCache
from imagen_jax.text.encoder import TextEncoder, checkpoint_fingerprint, open_text_encoder
from imagen_jax.text.t5 import T5Config, T5Encoder
from imagen_jax.text.tokenizer import Tokenizer, train_sentencepiece
from imagen_jax.text.weights import load_t5_encoder, save_t5_encoder

__all__ = ["CacheError", "CacheSpec", "EmbeddingCache", "T5Config", "T5Encoder", "TextEncoder",
           "Tokenizer", "checkpoint_fingerprint", "load_t5_encoder", "open_text_encoder",
           "save_t5_encoder", "train_sentencepiece"]
