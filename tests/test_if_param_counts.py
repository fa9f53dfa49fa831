"""The parameter counts of DeepFloyd IF's released U-Nets, from their published configs.

tests/data/if_configs/ holds the diffusers `unet/config.json` of IF-I-XL-v1.0 and IF-II-L-v1.0 as
found in public copies (tests/data/if_configs/SOURCES.md names each value's source; IF-I-M-v1.0's
config was not found offline). Each goes through `IFUNetConfig.from_diffusers` and
`abstract_params` (`jax.eval_shape`: nothing is allocated, so the 4.3B model takes seconds on
CPU) and is counted:

  * the count equals diffusers' own `UNet2DConditionModel.from_config` of the same file, built on
    torch's meta device (no memory either), exactly;
  * it matches the size DeepFloyd publishes on each model card (IF-I-XL "4.3B", IF-II-L "1.2B") at
    the card's precision, and — where it holds — within 1%;
  * IF-I-XL's count also matches its released checkpoint's size (the 16-bit safetensors file,
    listed as 8.61 GB on the Hub; SOURCES.md).

No accelerator, network or weights needed.
"""

import json
import math
from pathlib import Path

import flax.linen as nn
import jax
import pytest

from imagen_jax.models.if_config import IFUNetConfig
from imagen_jax.models.if_weights import abstract_params

CONFIGS = Path(__file__).parent / "data" / "if_configs"
# name: (the card's "Num Parameters" in billions, as printed; its last printed digit)
PUBLISHED = {"IF-I-XL-v1.0": (4.3, 0.1), "IF-II-L-v1.0": (1.2, 0.1)}
# Released 16-bit checkpoint sizes as the Hub lists them (GB, 2 decimals): 2 bytes a parameter.
FP16_CHECKPOINT_GB = {"IF-I-XL-v1.0": 8.61}


def _config(name: str) -> dict:
  return json.loads((CONFIGS / f"{name}.json").read_text())


def _our_count(name: str) -> int:
  params = abstract_params(IFUNetConfig.from_diffusers(_config(name)))
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nn.unbox(params)))


@pytest.fixture(scope="module")
def counts() -> dict[str, int]:
  return {name: _our_count(name) for name in PUBLISHED}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_count_equals_diffusers_on_the_meta_device(name, counts):
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  with torch.device("meta"):
    model = diffusers.UNet2DConditionModel.from_config(_config(name))
  assert counts[name] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_count_matches_the_published_size(name, counts):
  billions, last_digit = PUBLISHED[name]
  assert abs(counts[name] / 1e9 - billions) <= last_digit / 2, counts[name]


@pytest.mark.parametrize("name", [
    "IF-I-XL-v1.0",
    pytest.param("IF-II-L-v1.0", marks=pytest.mark.xfail(strict=True, reason=(
        "1,243,277,190 parameters, 3.6% above the card's rounded '1.2B' (time_embedding_dim "
        "1280 = model_channels × max(channel_mult), as DeepFloyd's UNetModel and diffusers' "
        "scripts/convert_if.py set it; see SOURCES.md)"))),
])
def test_count_within_one_percent_of_the_published_size(name, counts):
  published = PUBLISHED[name][0] * 1e9
  assert abs(counts[name] - published) <= 0.01 * published, counts[name]


@pytest.mark.parametrize("name", sorted(FP16_CHECKPOINT_GB))
def test_count_matches_the_released_checkpoint_size(name, counts):
  assert round(2 * counts[name] / 1e9, 2) == FP16_CHECKPOINT_GB[name]
