"""`shapes`: procedurally drawn scenes of coloured shapes with compositional captions.

The embedded default dataset: no download, any resolution and size, deterministic from a seed.
Each example stores its ground truth (per object shape, colour and size ids, centre and box, the
number of objects and the relation id; see `imagen_jax.data.shapes_scene`) so that generated images
can be scored exactly; the id → name tables are in the dataset's metadata.

    build_dataset("shapes", data_dir, resolution=64, num_train=10_000, num_test=1_000, seed=0)
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from imagen_jax.data import shapes_scene
from imagen_jax.data.builders import common


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
  """Resolution, number of examples per split and seed; `make` names the config after them."""

  resolution: int = 64
  num_train: int = 10_000
  num_test: int = 1_000
  seed: int = 0
  p_two: float = 0.6  # probability of a two-object scene
  shapes: tuple[str, ...] = shapes_scene.SHAPES  # the shapes objects are drawn from
  sizes: tuple[str, ...] = shapes_scene.SIZE_NAMES  # the sizes objects are drawn from
  relations: tuple[str, ...] = shapes_scene.RELATIONS  # the relations of two-object scenes
  relation_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)  # how often each relation is drawn

  @classmethod
  def make(cls, resolution: int = 64, num_train: int = 10_000, num_test: int = 1_000,
           seed: int = 0, p_two: float = 0.6, shapes=shapes_scene.SHAPES,
           sizes=shapes_scene.SIZE_NAMES, relations=shapes_scene.RELATIONS,
           relation_weights=(1.0, 1.0, 1.0, 1.0)) -> ShapesConfig:
    shapes, sizes, relations = tuple(shapes), tuple(sizes), tuple(relations)
    relation_weights = tuple(float(w) for w in relation_weights)
    name = f"r{resolution}_n{num_train}_{num_test}_s{seed}"
    if p_two != 0.6:
      name += f"_p{p_two:g}"
    allowed = {}
    for what, names, table in (("shapes", shapes, shapes_scene.SHAPES),
                               ("sizes", sizes, shapes_scene.SIZE_NAMES),
                               ("relations", relations, shapes_scene.RELATIONS)):
      allowed[what] = ids = shapes_scene.name_indices(names, table, what)  # checks the names
      if ids is not None:
        name += f"_{what}-" + "-".join(table[i].replace(" ", "") for i in ids)
    if shapes_scene.relation_probabilities(relation_weights, allowed["relations"]) is not None:
      name += "_rw" + "-".join(f"{w:g}" for w in relation_weights)
    return cls(name=name, resolution=resolution, num_train=num_train, num_test=num_test,
               seed=seed, p_two=p_two, shapes=shapes, sizes=sizes, relations=relations,
               relation_weights=relation_weights,
               description=f"{resolution}px scenes, seed {seed}")


class Shapes(tfds.core.GeneratorBasedBuilder):
  """Scenes of one or two coloured shapes with captions such as
  'a small red circle to the left of a large blue square'."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}
  code_path = common.source_file(__file__)
  BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = [ShapesConfig.make(64),
                                                               ShapesConfig.make(256)]

  def _info(self) -> tfds.core.DatasetInfo:
    r = self.builder_config.resolution
    n = shapes_scene.MAX_OBJECTS
    ids = lambda doc: tfds.features.Tensor(shape=(n,), dtype=np.int32, doc=doc)
    features = common.captioned_image_features(
        (r, r, 3),
        num_objects=common.scalar(doc="1 or 2"),
        relation=common.scalar(doc="index into relations (object 0 <relation> object 1); -1"),
        shape=ids("per object index into shapes; -1 pads"),
        color=ids("per object index into color_names; -1 pads"),
        size=ids("per object index into size_names; -1 pads"),
        center=tfds.features.Tensor(shape=(n, 2), dtype=np.float32, doc="(x, y), fractions"),
        box=tfds.features.Tensor(shape=(n, 4), dtype=np.float32, doc="(x0, y0, x1, y1)"),
    )
    return common.dataset_info(self, features, description=__doc__,
                               metadata={"vocabulary": shapes_scene.vocabulary(),
                                         "config": dataclasses.asdict(self.builder_config)})

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    c = self.builder_config
    return {"train": self._generate_examples("train", c.num_train),
            "test": self._generate_examples("test", c.num_test)}

  def _generate_examples(self, split: str, num: int):
    c = self.builder_config
    for i in range(num):
      scene = shapes_scene.sample_scene(
          shapes_scene.scene_rng(c.seed, common.SPLIT_CODES[split], i), c.p_two,
          shapes=c.shapes, sizes=c.sizes, relations=c.relations,
          relation_weights=c.relation_weights)
      example_id = f"shapes/{split}/{i:07d}"
      yield example_id, {"id": example_id, "caption": scene.caption(),
                         "image": shapes_scene.render(scene, c.resolution), **scene.features()}
