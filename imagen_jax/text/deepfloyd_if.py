"""DeepFloyd IF's text conditioning: where a stage directory keeps its T5, how IF encodes prompts.

A DeepFloyd IF stage directory, as a user downloads it (diffusers layout), holds `model_index.json`,
`tokenizer/` (a T5 tokenizer) and, for stage I only, `text_encoder/` (T5-v1.1-XXL: config.json and
safetensors, maybe sharded). `IFPipeline.encode_prompt` conditions IF's U-Nets differently from
our own stages, and an encoder or cache that serves IF must keep all three differences:

  1. prompts are lower-cased and stripped (`preprocess_prompt`) and tokenized to 77 tokens, the
     length IF's U-Nets were trained on (`IF_MAX_LENGTH`);
  2. the U-Net receives all 77 hidden states, padding positions included and unmasked (T5 runs
     with the attention mask, but its outputs at padding positions are kept, not zeroed);
  3. the unconditional input of classifier-free guidance is the encoding of "", not zeros.

`TextEncoder.from_if_directory` (imagen_jax/text/encoder.py) loads such an encoder; this module
only knows the directory layout, so that the pretrained cascade and the caption encoder share it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

IF_MAX_LENGTH = 77  # IFPipeline.encode_prompt: T5 "was trained with a max length of 77" for IF


def preprocess_prompt(prompt: str) -> str:
  """IF's `_text_preprocessing` without caption cleaning (what the pipelines do when bs4 or ftfy
  is missing, or with clean_caption=False): cleaning needs packages that are no dependency here."""
  return prompt.lower().strip()


def is_if_directory(path: str | Path) -> bool:
  """Whether `path` is a diffusers-layout pipeline directory (model_index.json or text_encoder/)
  rather than a plain Hugging Face T5 checkpoint (config.json at its top)."""
  path = Path(path)
  return (path / "model_index.json").is_file() or (path / "text_encoder").is_dir()


def if_text_encoder_dir(path: str | Path, max_length: int) -> Path:
  """The `text_encoder/` folder of an IF stage directory, after checking that `max_length` is
  IF's 77 tokens (errors say what to pass or which directory to use instead)."""
  path = Path(path)
  folder = path / "text_encoder"
  if not (folder / "config.json").is_file():
    raise FileNotFoundError(
        f"{path} is a DeepFloyd IF directory without text_encoder/config.json: IF's stage II "
        "downloads (IF-II-*) ship no T5, stage I's directory (e.g. IF-I-XL-v1.0) carries the one "
        "every stage is conditioned on; point config.text.encoder at the stage I directory")
  if max_length != IF_MAX_LENGTH:
    raise ValueError(
        f"max_length={max_length} with the DeepFloyd IF directory {path}: IF's U-Nets were "
        f"trained on {IF_MAX_LENGTH} T5 tokens; pass --config.text.max_length={IF_MAX_LENGTH}")
  return folder


def load_if_tokenizer(path: str | Path) -> Any:
  """The transformers tokenizer of an IF directory's `tokenizer/`, of the class its
  model_index.json names (T5Tokenizer, as diffusers' `from_pretrained` loads it), local files
  only."""
  import transformers  # deferred: importing transformers costs seconds

  path = Path(path)
  folder = path / "tokenizer"
  if not folder.is_dir():
    raise FileNotFoundError(f"{path} has no tokenizer/ folder (IF's T5 tokenizer)")
  cls = transformers.AutoTokenizer
  index = path / "model_index.json"
  if index.is_file():
    entry = json.loads(index.read_text()).get("tokenizer")
    if isinstance(entry, list) and len(entry) == 2 and entry[0] == "transformers":
      cls = getattr(transformers, entry[1], cls)
  try:
    return cls.from_pretrained(str(folder), local_files_only=True)
  except (OSError, ValueError) as e:
    raise ValueError(f"cannot read the tokenizer in {folder}: {e}") from e
