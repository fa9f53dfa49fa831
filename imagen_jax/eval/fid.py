"""FID and CLIP score with models the user supplies (nothing is downloaded here).

Both metrics need a pretrained network this package does not ship. They take a plain Python
callable, which `load_feature_extractor` / `load_clip_scorer` import from a spec string
`module.path:name` (the module must be importable: installed, or on PYTHONPATH). If the spec ends
in `()` the named object is called once, without arguments, to build the callable — the place to
load weights once.

Feature extractor: `extractor(images) -> features`, images (N, H, W, 3) float32 in [-1, 1]
(the project's convention; resize inside if the network wants another size), features (N, D).
A locally stored torchvision Inception-v3 (pool3, 2048-d — torchvision's weights are close to,
but not identical with, the TF-Inception of the original FID; use pytorch-fid's `FID_WEIGHTS`
converted weights for numbers comparable with papers), in `my_fid.py` on PYTHONPATH:

    import numpy as np, torch, torch.nn.functional as F, torchvision

    def inception():
      net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
      net.load_state_dict(torch.load("/models/inception_v3_google.pth"))  # a local file
      net.fc = torch.nn.Identity()
      net.eval()
      mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
      std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

      @torch.no_grad()
      def extract(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.asarray(images, np.float32)).permute(0, 3, 1, 2)
        x = F.interpolate((x + 1) / 2, size=(299, 299), mode="bilinear", align_corners=False)
        return net((x - mean) / std).numpy()
      return extract

    fid(fake, real, load_feature_extractor("my_fid:inception()"), batch_size=50)

A Flax port works the same way: `def inception(): params = load(...); return jax.jit(lambda x:
model.apply(params, resize(x)))`.

CLIP scorer: `scorer(images, captions) -> similarities`, (N,) cosine similarities of each image
with its own caption (e.g. from a local `transformers` CLIPModel: normalised image and text
embeddings, row-wise dot product). `clip_score` reports 100 · mean(max(cos, 0)), the convention
of torchmetrics' CLIPScore.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from imagen_jax.eval import metrics

FeatureExtractor = Callable[[np.ndarray], Any]
ClipScorer = Callable[[np.ndarray, Sequence[str]], Any]


def load_callable(spec: str) -> Callable[..., Any]:
  """`module.path:name` → that object; `module.path:name()` → the result of calling it."""
  module_name, sep, attr = spec.partition(":")
  if not sep or not module_name or not attr:
    raise ValueError(f"expected 'module.path:function' or 'module.path:factory()', got {spec!r}")
  build = attr.endswith("()")
  attr = attr.removesuffix("()")
  obj: Any = importlib.import_module(module_name)
  for part in attr.split("."):
    obj = getattr(obj, part)
  if build:
    obj = obj()
  if not callable(obj):
    raise TypeError(f"{spec!r} is not callable: {obj!r}")
  return obj


def load_feature_extractor(spec: str) -> FeatureExtractor:
  """A feature extractor images (N, H, W, 3) in [-1, 1] → (N, D) from a spec (module docs)."""
  return load_callable(spec)


def load_clip_scorer(spec: str) -> ClipScorer:
  """A CLIP scorer (images, captions) → (N,) cosine similarities from a spec (module docs)."""
  return load_callable(spec)


def as_signed_images(images: np.ndarray) -> np.ndarray:
  """NHWC images as float32 in [-1, 1] (uint8 is rescaled; floats are taken as they are)."""
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"expected (N, H, W, 3) images, got shape {images.shape}")
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 127.5 - 1.0
  return images.astype(np.float32)


def extract_features(images: np.ndarray, extractor: FeatureExtractor,
                     batch_size: int = 64) -> np.ndarray:
  """(N, D) float64 features of NHWC images, `batch_size` images per call of `extractor`."""
  images = as_signed_images(images)
  out = []
  for start in range(0, len(images), batch_size):
    f = np.asarray(extractor(images[start:start + batch_size]), dtype=np.float64)
    out.append(f.reshape(f.shape[0], -1))
  return np.concatenate(out)


def fid(images_a: np.ndarray, images_b: np.ndarray, extractor: FeatureExtractor,
        batch_size: int = 64) -> float:
  """The Fréchet distance between the extractor's features of two image sets (each ≥ 2)."""
  stats_a = metrics.feature_statistics(extract_features(images_a, extractor, batch_size))
  stats_b = metrics.feature_statistics(extract_features(images_b, extractor, batch_size))
  return metrics.frechet_distance(*stats_a, *stats_b)


def clip_score(images: np.ndarray, captions: Sequence[str], scorer: ClipScorer,
               batch_size: int = 64) -> float:
  """100 · mean over pairs of max(cosine similarity of image and caption, 0)."""
  images = as_signed_images(images)
  if len(images) != len(captions):
    raise ValueError(f"{len(images)} images but {len(captions)} captions")
  sims = [np.asarray(scorer(images[s:s + batch_size], list(captions[s:s + batch_size])),
                     dtype=np.float64).reshape(-1)
          for s in range(0, len(images), batch_size)]
  return float(100.0 * np.mean(np.maximum(np.concatenate(sims), 0.0)))
