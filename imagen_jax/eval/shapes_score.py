"""Exact, model-free alignment scoring of generated `shapes` images against their prompts.

The `shapes` dataset (`imagen_jax.data.shapes_scene`) draws flat-coloured objects from a small
palette on a white background, so what an image shows can be read back from its pixels:

  1. every pixel takes the nearest of the palette colours and the background, if it is within
     `tolerance` (RGB distance on the 0–255 scale) of it, else it is left unassigned;
  2. the connected regions (4-neighbourhood) of each palette colour smaller than `min_area` (a
     fraction of the image area) are dropped as noise; the others are the cores of the detected
     objects; each core then grows (≤ 5% of the image side) over adjacent pixels that lie near
     the segment background → its colour and at least half-way along it — the half-coverage
     boundary of a soft (blurred, resampled, generated) edge, which pure colours would miss;
  3. per object: colour = the region's palette colour; size = small/large by the side of its
     bounding box (threshold: the geometric mean of the two sizes); position = the centre of
     the bounding box (the generator's notion; the pixels' centroid is kept too);
     shape = the nearest prototype of the row-width profile — the mean filled fraction of the
     bounding-box width in the top, middle and bottom quarter bands (square (1, 1, 1), circle
     ≈ (0.61, 0.98, 0.61), triangle (apex up) ≈ (0.13, 0.5, 0.88), diamond ≈ (0.25, 0.94, 0.25)).
     Unlike the fill ratio alone (triangle = diamond = 0.5), the profile separates all four.

Made for images of 64 px and more: at 32 px a small object is ~6 px wide and a few small circles
and diamonds become indistinguishable (~98% of shapes right on real 32 px images, 100% at 64).
Measured on 300 scenes at 64 px, "all attributes right": exact 100%, Gaussian noise σ = 0.1
(in [-1, 1]) 100%, Gaussian blur σ = 1 px 99%, σ = 1.5 px 73% (corners round off: shapes go).

A caption is parsed into a `SceneSpec` by inverting the generator's grammar exactly; an image is
scored by matching the caption's objects to the detections (the assignment with most attributes
right) and checking colour, shape, size, the object count and, for two objects, the relation of
their centres (along the relation's axis, with that displacement dominating the other one, up to
two pixels of slack).

    result = score(images, captions)   # {'color': .., 'shape': .., 'size': .., 'count': ..,
                                       #  'relation': .., 'all': .., 'num_images': ..}
    details = score_details(images, captions)   # one `ImageScore` per image
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Sequence

import numpy as np

from imagen_jax.data import shapes_scene as ss

PALETTE = np.array([ss.COLORS[c] for c in ss.COLOR_NAMES] + [ss.BACKGROUND], np.float32)
BACKGROUND_ID = len(ss.COLOR_NAMES)
SIZE_THRESHOLD = math.sqrt(ss.SIZES["small"] * ss.SIZES["large"])
SHAPE_PROFILES = {"square": (1.0, 1.0, 1.0), "circle": (0.61, 0.98, 0.61),
                  "triangle": (0.125, 0.5, 0.875), "diamond": (0.25, 0.94, 0.25)}
DEFAULT_TOLERANCE = 64.0
DEFAULT_MIN_AREA = 0.004  # ≈ a quarter of the smallest object (a small triangle: 0.0162)

_WORD = lambda names: "|".join(re.escape(n) for n in names)
_PHRASE = rf"a ({_WORD(ss.SIZE_NAMES)}) ({_WORD(ss.COLOR_NAMES)}) ({_WORD(ss.SHAPES)})"
_CAPTION = re.compile(rf"{_PHRASE}(?: ({_WORD(ss.RELATIONS)}) {_PHRASE})?")


@dataclasses.dataclass(frozen=True)
class ObjectSpec:
  """One object of a caption, by name."""

  shape: str
  color: str
  size: str

  def phrase(self) -> str:
    return f"a {self.size} {self.color} {self.shape}"


@dataclasses.dataclass(frozen=True)
class SceneSpec:
  """What a caption asks for: one or two objects; `relation` relates object 0 to 1 (or None)."""

  objects: tuple[ObjectSpec, ...]
  relation: str | None = None

  def caption(self) -> str:
    if self.relation is None:
      return self.objects[0].phrase()
    return f"{self.objects[0].phrase()} {self.relation} {self.objects[1].phrase()}"


@dataclasses.dataclass(frozen=True)
class Detection:
  """An object found in an image. `center` (x, y) is the centre of its bounding box `box`
  (x0, y0, x1, y1) — the generator's notion of an object's position, which the relations use —
  and `centroid` the mean of its pixels, all as fractions of the image side; `area` is a fraction
  of the image area and `profile` the row-width profile."""

  shape: str
  color: str
  size: str
  center: tuple[float, float]
  centroid: tuple[float, float]
  box: tuple[float, float, float, float]
  area: float
  profile: tuple[float, float, float]


@dataclasses.dataclass(frozen=True)
class ImageScore:
  """One image against its caption. `matched[k]` is the detection given to caption object k
  (None if there were too few); `correct[k]` maps 'color'/'shape'/'size' to right or wrong;
  `relation_ok` is None for one-object captions."""

  caption: str
  spec: SceneSpec
  detections: tuple[Detection, ...]
  matched: tuple[Detection | None, ...]
  correct: tuple[dict[str, bool], ...]
  count_ok: bool
  relation_ok: bool | None

  @property
  def all_ok(self) -> bool:
    return (self.count_ok and self.relation_ok is not False
            and all(all(c.values()) for c in self.correct))


def parse_caption(caption: str) -> SceneSpec:
  """The `SceneSpec` of a `shapes` caption; ValueError if it is not in the grammar."""
  m = _CAPTION.fullmatch(caption.strip())
  if m is None:
    raise ValueError(f"not a shapes caption: {caption!r}")
  size0, color0, shape0, relation, size1, color1, shape1 = m.groups()
  objects = (ObjectSpec(shape0, color0, size0),)
  if relation is not None:
    objects += (ObjectSpec(shape1, color1, size1),)
  return SceneSpec(objects, relation)


def to_rgb255(image: np.ndarray) -> np.ndarray:
  """An HWC image as float32 RGB on the 0–255 scale: uint8 as is, floats read as [-1, 1]."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
  if image.dtype == np.uint8:
    return image.astype(np.float32)
  return (np.clip(image.astype(np.float32), -1.0, 1.0) + 1.0) * 127.5


def _connected_components(classes: np.ndarray) -> np.ndarray:
  """Labels of the 4-connected regions of equal class among pixels with class < BACKGROUND_ID
  (others get -1); labels are arbitrary distinct non-negative ints."""
  h, w = classes.shape
  big = h * w
  active = classes < BACKGROUND_ID
  labels = np.where(active, np.arange(big).reshape(h, w), big)
  padded_classes = np.pad(classes, 1, constant_values=-1)
  same = [padded_classes[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] == classes
          for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))]
  while True:
    padded = np.pad(labels, 1, constant_values=big)
    new = labels
    for (dy, dx), ok in zip(((-1, 0), (1, 0), (0, -1), (0, 1)), same):
      neighbour = padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
      new = np.minimum(new, np.where(ok & active, neighbour, big))
    flat = np.append(new.ravel(), big)
    new = flat[new]  # pointer jumping: a label points at a pixel of the same region
    if np.array_equal(new, labels):
      return np.where(active, labels, -1)
    labels = new


def _describe(mask: np.ndarray, color: int) -> Detection:
  """The Detection of one region (a bool mask) of palette colour `color`."""
  res_y, res_x = mask.shape
  ys, xs = np.nonzero(mask)
  y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
  height, width = y1 - y0, x1 - x0
  rows = mask[y0:y1, x0:x1].sum(axis=1) / width
  t = (np.arange(height) + 0.5) / height
  bands = [(t < 0.25), (t >= 0.375) & (t < 0.625), (t >= 0.75)]
  profile = tuple(float(rows[b].mean()) if b.any() else float(rows.mean()) for b in bands)
  shape = min(SHAPE_PROFILES, key=lambda s: sum((p - q)**2
                                                for p, q in zip(profile, SHAPE_PROFILES[s])))
  side = math.sqrt(height / res_y * width / res_x)
  return Detection(
      shape=shape, color=ss.COLOR_NAMES[color],
      size="small" if side < SIZE_THRESHOLD else "large",
      center=(float((x0 + x1) / 2 / res_x), float((y0 + y1) / 2 / res_y)),
      centroid=(float((xs.mean() + 0.5) / res_x), float((ys.mean() + 0.5) / res_y)),
      box=(x0 / res_x, y0 / res_y, x1 / res_x, y1 / res_y),
      area=float(len(ys) / (res_x * res_y)), profile=profile)


def _edge_pixels(rgb: np.ndarray, tolerance: float) -> np.ndarray:
  """(H, W, colours) bool: the pixel lies within `tolerance` of the segment background → colour,
  at least half-way to the colour (a pixel at least half covered by a soft-edged object)."""
  background = PALETTE[BACKGROUND_ID]
  directions = PALETTE[:BACKGROUND_ID] - background
  alpha = (rgb - background) @ directions.T / (directions**2).sum(axis=1)
  nearest = background + np.clip(alpha, 0, 1)[..., None] * directions
  residual = np.linalg.norm(rgb[:, :, None, :] - nearest, axis=-1)
  return (alpha >= 0.5) & (residual <= tolerance)


def _dilate(mask: np.ndarray) -> np.ndarray:
  padded = np.pad(mask, 1)
  return (mask | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:])


def analyze_image(image: np.ndarray, *, tolerance: float = DEFAULT_TOLERANCE,
                  min_area: float = DEFAULT_MIN_AREA, max_objects: int = 8
                  ) -> list[Detection]:
  """The objects in one HWC image (uint8, or float in [-1, 1]), largest first (at most
  `max_objects`); see the module docstring for the method."""
  rgb = to_rgb255(image)
  dist = np.linalg.norm(rgb[:, :, None, :] - PALETTE[None, None], axis=-1)
  classes = np.argmin(dist, axis=-1)
  classes = np.where(np.min(dist, axis=-1) <= tolerance, classes, -1)
  labels = _connected_components(np.where(classes < 0, BACKGROUND_ID + 1, classes))
  ids, counts = np.unique(labels[labels >= 0], return_counts=True)
  keep = [(c, i) for i, c in zip(ids, counts) if c >= min_area * labels.size]
  cores = [labels == i for _, i in sorted(keep, reverse=True)[:max_objects]]
  colours = [int(classes[m][0]) for m in cores]
  # grow each core over the soft edge of its colour, at most `max_grow` pixels, never into
  # another object
  edge = _edge_pixels(rgb, tolerance)
  max_grow = max(1, round(0.05 * max(labels.shape)))
  masks = list(cores)
  taken = np.any(cores, axis=0) if cores else np.zeros(labels.shape, bool)
  for _ in range(max_grow):
    grown = [(_dilate(m) & edge[:, :, k] & ~(taken & ~m)) for m, k in zip(masks, colours)]
    if all(np.array_equal(g, m) for g, m in zip(grown, masks)):
      break
    masks = grown
    taken = np.any(masks, axis=0)
  return [_describe(m, k) for m, k in zip(masks, colours)]


def _displacement(a: tuple[float, float], b: tuple[float, float],
                  relation: str) -> tuple[float, float]:
  """(from `a` to `b` along the relation's axis, signed so that positive is as it asks; across)."""
  dx, dy = b[0] - a[0], b[1] - a[1]
  return {"to the left of": (dx, dy), "to the right of": (-dx, dy), "above": (dy, dx),
          "below": (-dy, dx)}[relation]


def relation_holds(a: tuple[float, float], b: tuple[float, float], relation: str,
                   slack: float = 0.0) -> bool:
  """Whether centre `a` is `relation` centre `b`: the displacement along the relation's axis
  is positive and larger than the one across it (as the generator draws them), up to `slack`
  (for pixel quantisation of the centres)."""
  main, other = _displacement(a, b, relation)
  return main > 0 and main + slack > abs(other)


def relation_parts(scores: Sequence[ImageScore]) -> dict[str, float]:
  """Why two-object images fail their relation, over the two-object captions among `scores`:
  'drawn' — both objects found (each caption object matched to a detection); 'direction' — of
  those, the first object on the asked side of the second along the asked axis, whether or not
  that displacement dominates (chance: 0.5). NaN where there is nothing to rate."""
  pairs = [s for s in scores if s.spec.relation is not None]
  drawn = [s for s in pairs if None not in s.matched]
  ahead = [_displacement(s.matched[0].center, s.matched[1].center, s.spec.relation)[0] > 0
           for s in drawn]
  return {"drawn": len(drawn) / len(pairs) if pairs else float("nan"),
          "direction": float(np.mean(ahead)) if ahead else float("nan")}


def _attributes(spec: ObjectSpec, det: Detection | None) -> dict[str, bool]:
  if det is None:
    return {"color": False, "shape": False, "size": False}
  return {"color": det.color == spec.color, "shape": det.shape == spec.shape,
          "size": det.size == spec.size}


def score_image(image: np.ndarray, caption: str, *, tolerance: float = DEFAULT_TOLERANCE,
                min_area: float = DEFAULT_MIN_AREA) -> ImageScore:
  """One image against its caption (see the module docstring)."""
  spec = parse_caption(caption)
  detections = tuple(analyze_image(image, tolerance=tolerance, min_area=min_area))
  n = len(spec.objects)
  slack = 2.0 / np.shape(image)[1]  # two pixels
  slots: list[Detection | None] = list(detections) + [None] * n
  best, best_key = None, None
  for assignment in itertools.permutations(range(len(slots)), n):
    chosen = tuple(slots[k] for k in assignment)
    attrs = tuple(_attributes(o, d) for o, d in zip(spec.objects, chosen))
    relation_ok = None
    if spec.relation is not None:
      relation_ok = (None not in chosen and relation_holds(
          chosen[0].center, chosen[1].center, spec.relation, slack=slack))
    # most attributes right, then most colours right, then the relation (breaks ties of twins)
    key = (sum(sum(a.values()) for a in attrs), sum(a["color"] for a in attrs), bool(relation_ok))
    if best_key is None or key > best_key:
      best, best_key = (chosen, attrs, relation_ok), key
  matched, correct, relation_ok = best
  return ImageScore(caption, spec, detections, matched, correct, len(detections) == n,
                    relation_ok)


def score_details(images: Sequence[np.ndarray] | np.ndarray, captions: Sequence[str], *,
                  tolerance: float = DEFAULT_TOLERANCE, min_area: float = DEFAULT_MIN_AREA
                  ) -> list[ImageScore]:
  """`score_image` of every (image, caption) pair."""
  if len(images) != len(captions):
    raise ValueError(f"{len(images)} images but {len(captions)} captions")
  return [score_image(im, c, tolerance=tolerance, min_area=min_area)
          for im, c in zip(images, captions)]


def aggregate(scores: Sequence[ImageScore]) -> dict[str, float]:
  """Rates over images: 'color', 'shape', 'size' over all caption objects; 'count' and 'all'
  over images; 'relation' over two-object captions (NaN if there are none)."""
  objects = [c for s in scores for c in s.correct]
  rate = lambda xs: float(np.mean(xs)) if len(xs) else float("nan")
  relations = [s.relation_ok for s in scores if s.relation_ok is not None]
  result = {name: rate([c[name] for c in objects]) for name in ("color", "shape", "size")}
  return {**result, "count": rate([s.count_ok for s in scores]), "relation": rate(relations),
          "all": rate([s.all_ok for s in scores]), "num_images": float(len(scores))}


def score(images: Sequence[np.ndarray] | np.ndarray, captions: Sequence[str], *,
          tolerance: float = DEFAULT_TOLERANCE, min_area: float = DEFAULT_MIN_AREA
          ) -> dict[str, float]:
  """Per-attribute accuracies and the all-attributes-correct rate of images against captions
  (images NHWC uint8 or float in [-1, 1]); `score_details` gives the per-image breakdown."""
  return aggregate(score_details(images, captions, tolerance=tolerance, min_area=min_area))
