"""`emoji_captions`: the 881 emoji PNGs of Debian's `libjs-emojify`, captioned by their names.

Reads /usr/share/javascript/emojify.js/images/emoji/*.png (`apt-get install libjs-emojify`);
nothing is downloaded. The caption is the file name with underscores as spaces
("alarm_clock.png" → "alarm clock"; "+1"/"-1" → "thumbs up"/"thumbs down"), optionally inside a
template such as "an emoji of {}". Transparent pixels are composited on `background` (white by
default); the few images that are not 64×64 are resized to 64×64. The split is deterministic: an
emoji is in `test` when a hash of its name and the seed falls under `test_percent`.

    build_dataset("emoji_captions", data_dir, background=(255, 255, 255), test_percent=10)
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from imagen_jax.data import images
from imagen_jax.data.builders import common

DEFAULT_DIR = "/usr/share/javascript/emojify.js/images/emoji"
RESOLUTION = 64
ALIASES = {"+1": "thumbs up", "-1": "thumbs down"}


def caption_for(name: str, template: str = "{}") -> str:
  return template.format(ALIASES.get(name, name.replace("_", " ")))


def split_of(name: str, seed: int, test_percent: int) -> str:
  digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
  return "test" if int.from_bytes(digest[:8], "big") % 100 < test_percent else "train"


@dataclasses.dataclass(eq=False)
class EmojiConfig(tfds.core.BuilderConfig):
  """Source folder, background colour, caption template and the deterministic split."""

  source_dir: str = DEFAULT_DIR
  background: tuple[int, int, int] = (255, 255, 255)
  template: str = "{}"
  test_percent: int = 10
  seed: int = 0

  @classmethod
  def make(cls, source_dir: str = DEFAULT_DIR, background: tuple[int, int, int] = (255, 255, 255),
           template: str = "{}", test_percent: int = 10, seed: int = 0) -> EmojiConfig:
    bg = "".join(f"{int(c):02x}" for c in background)
    name = f"bg{bg}_t{test_percent}_s{seed}"
    if template != "{}":
      name += "_" + hashlib.sha256(template.encode()).hexdigest()[:8]
    name += common.dir_suffix(source_dir, DEFAULT_DIR)
    return cls(name=name, source_dir=str(source_dir), background=tuple(int(c) for c in background),
               template=template, test_percent=test_percent, seed=seed)


class EmojiCaptions(tfds.core.GeneratorBasedBuilder):
  """emojify.js emoji (64×64) with their names as captions."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}
  code_path = common.source_file(__file__)
  BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = [EmojiConfig.make()]

  def _info(self) -> tfds.core.DatasetInfo:
    return common.dataset_info(
        self, common.captioned_image_features((RESOLUTION, RESOLUTION, 3)), description=__doc__,
        homepage="https://github.com/hassankhan/emojify.js",
        metadata={"config": dataclasses.asdict(self.builder_config)})

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    c = self.builder_config
    files = sorted(Path(c.source_dir).glob("*.png"))
    if not files:
      raise FileNotFoundError(f"no emoji PNGs in {c.source_dir}; install them with "
                              "`apt-get install libjs-emojify` or pass source_dir=")
    by_split: dict[str, list[Path]] = {"train": [], "test": []}
    for f in files:
      by_split[split_of(f.stem, c.seed, c.test_percent)].append(f)
    return {split: self._generate_examples(split, paths) for split, paths in by_split.items()}

  def _generate_examples(self, split: str, paths: list[Path]):
    c = self.builder_config
    for path in paths:
      with Image.open(path) as im:
        rgb = np.asarray(images.to_rgb(im, c.background))
      example_id = f"emoji/{path.stem}"
      yield example_id, {"id": example_id, "caption": caption_for(path.stem, c.template),
                         "image": images.resize(rgb, RESOLUTION)}
