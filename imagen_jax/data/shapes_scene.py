"""Procedural scenes of coloured shapes with compositional captions: sampling, drawing, captions.

A scene has one or two objects; each has a shape, a colour, a size and a centre. A two-object
scene also has a relation: "<object 0> <relation> <object 1>", e.g. "a small red circle to the left
of a large blue square". Scenes are drawn exactly (no anti-aliasing): a pixel belongs to an object
when its centre lies inside it, and takes the object's colour exactly, on a white background;
objects never overlap, and in a two-object scene the displacement along the relation's axis is
larger than across it, so the relation is unambiguous. Ground truth therefore can be recovered from
the pixels: each colour's pixels are its object (bounding box within 1 px of `box`).

Coordinates are fractions of the image side (x to the right, y downwards), so a scene is the same
at every resolution. Every scene is a pure function of (seed, split, index).
"""

from __future__ import annotations

import dataclasses

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond")
COLORS = {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 70, 220),
          "yellow": (240, 200, 20), "purple": (140, 50, 170), "cyan": (20, 190, 210)}
COLOR_NAMES = tuple(COLORS)
SIZES = {"small": 0.18, "large": 0.32}  # the side of the object's bounding box / the image side
SIZE_NAMES = tuple(SIZES)
RELATIONS = ("to the left of", "to the right of", "above", "below")
INVERSE_RELATIONS = (1, 0, 3, 2)  # "A to the left of B" says "B to the right of A"
BACKGROUND = (255, 255, 255)
GAP = 0.05  # the minimal free space between two objects along the relation's axis
MAX_OBJECTS = 2
# What a caption says, in a canonical order (Scene.reading): the relation's axis (none,
# horizontal, vertical), then colour, shape and size of the left/top object, then of the other
# (ids + 1; 0: no object). Classes per slot:
READING_CLASSES = (3, len(COLORS) + 1, len(SHAPES) + 1, len(SIZES) + 1,
                   len(COLORS) + 1, len(SHAPES) + 1, len(SIZES) + 1)
# What each word of a caption belongs to (Scene.word_reading): where its object is (ROLES), and
# that object's colour, shape and size (ids + 1; 0 for a relation word). Classes per slot:
ROLES = ("none", "only", "left", "right", "top", "bottom")
WORD_CLASSES = (len(ROLES), len(COLORS) + 1, len(SHAPES) + 1, len(SIZES) + 1)


@dataclasses.dataclass(frozen=True)
class SceneObject:
  """One object: indices into SHAPES, COLOR_NAMES, SIZE_NAMES; centre (x, y) in [0, 1]."""

  shape: int
  color: int
  size: int
  center: tuple[float, float]

  @property
  def half_extent(self) -> float:
    return SIZES[SIZE_NAMES[self.size]] / 2

  @property
  def box(self) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) as fractions of the image side."""
    h, (x, y) = self.half_extent, self.center
    return (x - h, y - h, x + h, y + h)

  def phrase(self) -> str:
    return f"a {SIZE_NAMES[self.size]} {COLOR_NAMES[self.color]} {SHAPES[self.shape]}"


@dataclasses.dataclass(frozen=True)
class Scene:
  """One or two objects; `relation` (an index into RELATIONS, or -1) relates object 0 to 1."""

  objects: tuple[SceneObject, ...]
  relation: int = -1

  def caption(self) -> str:
    if len(self.objects) == 1:
      return self.objects[0].phrase()
    return f"{self.objects[0].phrase()} {RELATIONS[self.relation]} {self.objects[1].phrase()}"

  def paraphrase(self) -> Scene:
    """The same scene said the other way round: "B to the right of A" for "A to the left of B"."""
    if len(self.objects) == 1:
      return self
    return Scene(self.objects[::-1], INVERSE_RELATIONS[self.relation])

  @property
  def first_is_left_or_top(self) -> bool:
    """Whether objects[0] is the left/top one ("to the left of", "above"; two objects)."""
    return self.relation in (0, 2)

  def reading(self) -> list[int]:
    """The caption's content in a canonical order (READING_CLASSES): the same for "A to the
    left of B" and "B to the right of A"."""
    def ids(obj: SceneObject | None) -> list[int]:
      return [0, 0, 0] if obj is None else [obj.color + 1, obj.shape + 1, obj.size + 1]
    if len(self.objects) == 1:
      return [0] + ids(self.objects[0]) + ids(None)
    a, b = self.objects
    first, second = (a, b) if self.first_is_left_or_top else (b, a)
    return [1 + self.relation // 2] + ids(first) + ids(second)

  def word_reading(self) -> list[tuple[str, tuple[int, int, int, int]]]:
    """Each word of `caption()` with what it belongs to (WORD_CLASSES): where its object is
    ("left" for every word of "a small red circle" in "a small red circle to the left of ...")
    and that object's colour/shape/size ids + 1; a relation word gets (0, 0, 0, 0)."""
    if len(self.objects) == 1:
      roles = ("only",)
    else:
      roles = (("left", "right"), ("top", "bottom"))[self.relation // 2]
      roles = roles if self.first_is_left_or_top else roles[::-1]
    words = []
    for k, (obj, role) in enumerate(zip(self.objects, roles)):
      if k:
        words += [(w, (0, 0, 0, 0)) for w in RELATIONS[self.relation].split()]
      label = (ROLES.index(role), obj.color + 1, obj.shape + 1, obj.size + 1)
      words += [(w, label) for w in obj.phrase().split()]
    return words

  def features(self) -> dict[str, np.ndarray]:
    """Ground truth as fixed-shape arrays (padded to MAX_OBJECTS with -1 ids and zero boxes)."""
    n = len(self.objects)
    ids = np.full((3, MAX_OBJECTS), -1, np.int32)
    center = np.zeros((MAX_OBJECTS, 2), np.float32)
    box = np.zeros((MAX_OBJECTS, 4), np.float32)
    for k, obj in enumerate(self.objects):
      ids[:, k] = (obj.shape, obj.color, obj.size)
      center[k], box[k] = obj.center, obj.box
    return {"num_objects": np.int32(n), "relation": np.int32(self.relation), "shape": ids[0],
            "color": ids[1], "size": ids[2], "center": center, "box": box}


def _pick(rng: np.random.Generator, allowed: tuple[int, ...] | None, n: int) -> int:
  """An index in range(n), or one of `allowed` (the default draws exactly as before subsets)."""
  if allowed is None:
    return int(rng.integers(n))
  return allowed[int(rng.integers(len(allowed)))]


def _sample_object(rng: np.random.Generator, center: tuple[float, float] | None = None,
                   size: int | None = None, shapes: tuple[int, ...] | None = None,
                   sizes: tuple[int, ...] | None = None) -> SceneObject:
  size = _pick(rng, sizes, len(SIZES)) if size is None else size
  h = SIZES[SIZE_NAMES[size]] / 2
  if center is None:
    center = tuple(float(c) for c in rng.uniform(h, 1 - h, size=2))
  return SceneObject(_pick(rng, shapes, len(SHAPES)), int(rng.integers(len(COLORS))), size, center)


def name_indices(names: tuple[str, ...] | list[str] | None, table: tuple[str, ...],
                 what: str) -> tuple[int, ...] | None:
  """Names from `table` as indices (None or every name, in any order: None, i.e. no
  restriction — the default draw)."""
  if names is None or set(names) == set(table):
    return None
  unknown = [n for n in names if n not in table]
  if unknown or not names:
    raise ValueError(f"{what} {list(names)!r}: choose one or more of {list(table)}")
  return tuple(sorted({table.index(n) for n in names}))


def relation_probabilities(weights: tuple[float, ...] | None,
                           allowed: tuple[int, ...] | None = None) -> np.ndarray | None:
  """How often each of RELATIONS is drawn, from one weight per relation (None when they are
  all equal: the default draw); relations not `allowed` get 0."""
  if weights is None:
    return None
  w = np.asarray(weights, np.float64)
  if w.shape != (len(RELATIONS),) or not np.all(w >= 0):
    raise ValueError(f"relation_weights {tuple(weights)}: give {len(RELATIONS)} weights >= 0, "
                     f"one for each of {list(RELATIONS)}")
  if allowed is not None:
    w[[i for i in range(len(RELATIONS)) if i not in allowed]] = 0
  if not w.sum() > 0:
    raise ValueError(f"relation_weights {tuple(weights)}: every relation drawn has weight 0")
  if len(set(np.asarray(weights, np.float64))) == 1:
    return None
  return w / w.sum()


def _relation_holds(a: SceneObject, b: SceneObject, relation: int) -> bool:
  dx, dy = b.center[0] - a.center[0], b.center[1] - a.center[1]
  main, other = {0: (dx, dy), 1: (-dx, dy), 2: (dy, dx), 3: (-dy, dx)}[relation]
  return main > a.half_extent + b.half_extent + GAP and main > abs(other)


def sample_scene(rng: np.random.Generator, p_two: float = 0.6,
                 shapes: tuple[str, ...] | None = None,
                 sizes: tuple[str, ...] | None = None,
                 relations: tuple[str, ...] | None = None,
                 relation_weights: tuple[float, ...] | None = None) -> Scene:
  """A random scene: one object, or (with probability p_two) two related objects.

  `shapes` / `sizes` / `relations` restrict the objects and relations to those names (e.g.
  `shapes=("square",)`, `sizes=("large",)` with `p_two=1`: scenes that differ only in colours
  and the relation); None (or every name) draws exactly the default scenes.
  `relation_weights` (one per name of RELATIONS, None: equal) skews how often each relation is
  drawn, e.g. (3, 1, 3, 1): "to the left of" and "above" three times as often as their mirrors.
  """
  shape_ids = name_indices(shapes, SHAPES, "shapes")
  size_ids = name_indices(sizes, SIZE_NAMES, "sizes")
  relation_ids = name_indices(relations, RELATIONS, "relations")
  weights = relation_probabilities(relation_weights, relation_ids)
  kw = {"shapes": shape_ids, "sizes": size_ids}
  if rng.uniform() >= p_two:
    return Scene((_sample_object(rng, **kw),))
  if weights is None:
    relation = _pick(rng, relation_ids, len(RELATIONS))
  else:
    relation = int(rng.choice(len(RELATIONS), p=weights))
  while True:  # rejection sampling; accepts within a few tries for these sizes
    a, b = _sample_object(rng, **kw), _sample_object(rng, **kw)
    if _relation_holds(a, b, relation):
      return Scene((a, b), relation)


def scene_rng(seed: int, split_code: int, index: int) -> np.random.Generator:
  """The generator of scene `index` of a split: independent of how many scenes are drawn."""
  return np.random.default_rng((seed, split_code, index))


def object_mask(obj: SceneObject, resolution: int) -> np.ndarray:
  """(resolution, resolution) bool: the pixels whose centres lie inside the object."""
  coords = (np.arange(resolution, dtype=np.float64) + 0.5) / resolution
  x, y = coords[None, :] - obj.center[0], coords[:, None] - obj.center[1]
  h = obj.half_extent
  name = SHAPES[obj.shape]
  if name == "circle":
    return x**2 + y**2 <= h**2
  if name == "square":
    return (np.abs(x) <= h) & (np.abs(y) <= h)
  if name == "diamond":
    return np.abs(x) + np.abs(y) <= h
  if name == "triangle":  # apex up, base at the bottom of the box
    return (np.abs(y) <= h) & (np.abs(x) <= (y + h) / 2)
  raise ValueError(f"unknown shape {name!r}")


def render(scene: Scene, resolution: int) -> np.ndarray:
  """The scene drawn as a uint8 (resolution, resolution, 3) RGB image."""
  image = np.empty((resolution, resolution, 3), np.uint8)
  image[:] = BACKGROUND
  for obj in scene.objects:
    image[object_mask(obj, resolution)] = COLORS[COLOR_NAMES[obj.color]]
  return image


def vocabulary() -> dict[str, object]:
  """The id → name tables (stored in the dataset's metadata so scorers need no code)."""
  return {"shapes": list(SHAPES), "colors": {k: list(v) for k, v in COLORS.items()},
          "color_names": list(COLOR_NAMES), "sizes": dict(SIZES), "size_names": list(SIZE_NAMES),
          "relations": list(RELATIONS), "background": list(BACKGROUND),
          "coordinates": "fractions of the image side; x right, y down; box = (x0, y0, x1, y1)"}
