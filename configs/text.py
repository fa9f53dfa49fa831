"""Encode the captions of a dataset into the text-embedding cache.

    imagen-jax encode --config configs/text.py --workdir W \\
        --config.data.captions=file:captions.jsonl
    imagen-jax encode --config configs/text.py --workdir W \\
        --config.data.captions=tfds:/data/tensorflow_datasets/shapes/1.0.0 \\
        --config.data.splits=train,test \\
        --config.text.encoder=/models/t5-v1_1-xxl --config.text.param_dtype=bfloat16

With no `text.encoder`, the embedded tiny T5 is built in the workdir (tokenizer fit to the train
captions) — enough for tests and the CPU demo; real quality needs a real T5 checkpoint.
"""

import ml_collections

from imagen_jax.text.config import text_config


def get_config(arg=None):
  del arg
  config = ml_collections.ConfigDict()
  config.data = ml_collections.ConfigDict()
  config.data.captions = ""  # 'tfds:<builder dir>', 'tfds:<name>@<data dir>' or 'file:<path>'
  config.data.splits = ("train",)  # every split to encode
  config.text = text_config()
  return config
