"""The `text` config group, shared by every config that encodes captions or reads their embeddings."""

import ml_collections


def text_config() -> ml_collections.ConfigDict:
  """The `text` config group shared by every config that encodes or reads embeddings."""
  text = ml_collections.ConfigDict()
  text.encoder = ""  # local HF T5 checkpoint dir (e.g. t5-v1_1-xxl) or DeepFloyd IF stage I dir
  #                     (IF-I-XL-v1.0: IF's conditioning, max_length 77); "" = embedded tiny T5
  text.max_length = 128  # tokens per caption (Imagen: 128; DeepFloyd IF: 77)
  text.batch_size = 64  # captions per compiled encoder call (rounded up to a multiple of data × fsdp)
  # `imagen-jax encode`: the mesh over each process's own devices, e.g. "fsdp=-1" to split T5-XXL's
  # weights when a replica does not fit a chip ("" = one device); batches split over data × fsdp
  text.mesh = "data=-1"
  text.dtype = "float32"  # compute dtype; "bfloat16" on TPU
  text.param_dtype = ""  # cast weights on load, e.g. "bfloat16" for T5-XXL; "" = as stored
  text.cache_dir = ""  # default: <workdir>/text_cache
  text.cache_dtype = "bfloat16"  # storage dtype of cached embeddings
  text.shard_size = 4096  # captions per cache shard (the unit of resumption)
  text.default_tokenizer_split = "train"  # captions the embedded tokenizer is fit to
  text.default_vocab_size = 512
  text.default_seed = 0
  return text
