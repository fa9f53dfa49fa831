"""Making imagen-pytorch 2.1.0 import offline, beside the CPU torch wheel, without touching its code.

Two obstacles, both at import time and both outside anything the benchmark times:

1. torchvision. imagen-pytorch imports `torchvision.transforms` at module level (imagen_pytorch.py,
   elucidated_imagen.py, data.py) but uses it only for PIL output of `sample(return_pil_images=True)`
   and in its image-folder datasets. PyPI's torchvision wheel is a CUDA build that does not import
   beside the CPU torch 2.13 wheel, so it is not installed at all. `torchvision_stand_in()` puts a
   stand-in module — `torchvision.transforms` with the names imagen-pytorch refers to, each raising
   if ever called — into `sys.modules` for the duration of `import imagen_pytorch` only, and takes
   it out again. It is never on `sys.path`: transformers decides whether torchvision exists with
   `importlib.util.find_spec` (cached), and so does `datasets` (at import), and they must keep
   seeing that it does not, or they would import torchvision's real API (`InterpolationMode`, ...).
   `import_imagen_pytorch` therefore first imports every third-party module imagen-pytorch imports
   (`THIRD_PARTY`), which settles those checks while torchvision is still absent; only
   imagen-pytorch's own modules are imported with the stand-in present.

2. The Hugging Face hub. `Unet.__init__`'s default argument `text_embed_dim =
   get_encoded_dim(DEFAULT_T5_NAME)` (imagen_pytorch.py:1141; likewise imagen_video.py:1252 and
   configs.py:46,58) is evaluated when the module is imported, and `imagen_pytorch.t5.get_encoded_dim`
   calls `T5Config.from_pretrained('google/t5-v1_1-base')`, a hub request. `offline_hub_cache()`
   writes that repository's config.json (only d_model = 768 is read) into a private hub cache laid
   out as the hub client stores it (refs/main → snapshots/<revision>/config.json); the worker runs
   with HF_HUB_OFFLINE=1 and HF_HUB_CACHE pointing there, so transformers resolves the config from
   disk and nothing goes to the network. BENCH-A passes `text_embed_dim=256` explicitly and hands
   precomputed embeddings to the model, so the T5 itself is never loaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import types
from pathlib import Path

T5_NAME = "google/t5-v1_1-base"
# google/t5-v1_1-base's config.json, as published (imagen-pytorch reads d_model only).
T5_V1_1_BASE_CONFIG = {
  "architectures": ["T5ForConditionalGeneration"], "d_ff": 2048, "d_kv": 64, "d_model": 768,
  "decoder_start_token_id": 0, "dropout_rate": 0.1, "eos_token_id": 1,
  "feed_forward_proj": "gated-gelu", "initializer_factor": 1.0, "is_encoder_decoder": True,
  "layer_norm_epsilon": 1e-06, "model_type": "t5", "num_decoder_layers": 12, "num_heads": 12,
  "num_layers": 12, "output_past": True, "pad_token_id": 0,
  "relative_attention_num_buckets": 32, "tie_word_embeddings": False, "vocab_size": 32128,
}
_REVISION = "0" * 40  # a placeholder commit id: offline, refs/main is all that resolves it
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1", "DIFFUSERS_OFFLINE": "1"}
# What imagen-pytorch 2.1.0 imports from other packages (besides torch and torchvision).
THIRD_PARTY = ("transformers", "transformers.utils.import_utils", "datasets",
               "datasets.utils.file_utils", "accelerate", "kornia.augmentation", "ema_pytorch",
               "pytorch_warmup", "beartype", "einops", "einops.layers.torch", "fsspec", "pydantic",
               "packaging", "tqdm", "click", "PIL")
TORCHVISION_NAMES = ("Compose", "Resize", "CenterCrop", "RandomHorizontalFlip", "ToTensor",
                     "ToPILImage", "Lambda")


def offline_hub_cache(root: str | os.PathLike, repo: str = T5_NAME,
                      config: dict | None = None) -> Path:
  """Write `repo`'s config.json into a hub cache at `root` (idempotent); returns `root`."""
  root = Path(root)
  repo_dir = root / ("models--" + repo.replace("/", "--"))
  snapshot = repo_dir / "snapshots" / _REVISION
  snapshot.mkdir(parents=True, exist_ok=True)
  (repo_dir / "refs").mkdir(exist_ok=True)
  (repo_dir / "refs" / "main").write_text(_REVISION)
  (snapshot / "config.json").write_text(json.dumps(config or T5_V1_1_BASE_CONFIG, indent=2))
  return root


def offline_env(hub_cache: str | os.PathLike | None = None) -> dict[str, str]:
  """Environment variables of a peer worker: no hub or dataset requests; our hub cache if given."""
  env = dict(OFFLINE_ENV)
  if hub_cache is not None:
    env["HF_HUB_CACHE"] = str(hub_cache)
  return env


def _unavailable(name: str) -> type:
  def call(self, *args, **kwargs):
    raise RuntimeError(f"torchvision.transforms.{name} is the benchmark's stand-in "
                       "(benchmarks/peers/peer_env.py), which only lets imagen-pytorch import; "
                       "it cannot transform anything")

  return type(name, (), {"__init__": lambda self, *a, **k: None, "__call__": call})


@contextlib.contextmanager
def torchvision_stand_in():
  """`torchvision` and `torchvision.transforms` stand-ins in `sys.modules` inside the block only
  (or nothing, if a real torchvision is already imported)."""
  if "torchvision" in sys.modules:
    yield
    return
  package = types.ModuleType("torchvision")
  package.__path__ = []
  package.__version__ = "0.0.0+stand-in"
  transforms = types.ModuleType("torchvision.transforms")
  for name in TORCHVISION_NAMES:
    setattr(transforms, name, _unavailable(name))
  package.transforms = transforms
  sys.modules["torchvision"], sys.modules["torchvision.transforms"] = package, transforms
  try:
    yield
  finally:
    for name in ("torchvision", "torchvision.transforms"):
      if sys.modules.get(name) in (package, transforms):
        del sys.modules[name]


def import_imagen_pytorch():
  """`import imagen_pytorch` offline: the torchvision stand-in if torchvision is missing, and the
  hub config from the worker's HF_HUB_CACHE (see the module docstring)."""
  import importlib
  import importlib.util

  if os.environ.get("HF_HUB_OFFLINE") != "1":
    raise RuntimeError("import imagen_pytorch with HF_HUB_OFFLINE=1 and HF_HUB_CACHE from "
                       "offline_hub_cache(): its import asks the hub for a T5 config")
  for name in THIRD_PARTY:
    importlib.import_module(name)
  import transformers
  from transformers.utils import import_utils

  import_utils.is_torchvision_available()  # cached while torchvision is still absent
  for name in ("T5Config", "T5EncoderModel", "T5Tokenizer"):  # transformers imports lazily
    getattr(transformers, name)
  stand_in = importlib.util.find_spec("torchvision") is None
  with torchvision_stand_in() if stand_in else contextlib.nullcontext():
    import imagen_pytorch
  return imagen_pytorch, stand_in
