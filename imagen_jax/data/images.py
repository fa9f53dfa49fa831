"""Host-side image operations of the input pipeline and the builders (numpy + Pillow, uint8 HWC).

Resampling is Pillow's bicubic with antialiasing when shrinking (Pillow widens the filter support by
the reduction factor), the usual choice for making low-resolution conditioning images.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

RGB = tuple[int, int, int]


def to_rgb(image: Image.Image, background: RGB = (255, 255, 255)) -> Image.Image:
  """An RGB copy of a Pillow image; transparency (RGBA, LA, P with alpha) is composited on
  `background`."""
  if image.mode == "P" and "transparency" in image.info:
    image = image.convert("RGBA")
  if image.mode in ("RGBA", "LA", "PA"):
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, tuple(background) + (255,))
    return Image.alpha_composite(canvas, rgba).convert("RGB")
  return image.convert("RGB")


def center_crop_square(image: np.ndarray) -> np.ndarray:
  """The largest centred square of an HWC image."""
  h, w = image.shape[:2]
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  return image[top:top + side, left:left + side]


def resize(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
  """Bicubic resize of a uint8 HWC image to `size` (an int for a square, or (height, width))."""
  height, width = (size, size) if isinstance(size, int) else size
  if image.shape[:2] == (height, width):
    return image
  resized = Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC)
  return np.asarray(resized)


def square_resize(image: np.ndarray, size: int) -> np.ndarray:
  """Centre-crop a uint8 HWC image to a square and resize it to `size`×`size`."""
  return resize(center_crop_square(image), size)


def to_signed(image: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] → float32 [-1, 1]."""
  return image.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)


def from_signed(image: np.ndarray) -> np.ndarray:
  """float [-1, 1] → uint8 [0, 255] (clipped, rounded)."""
  return np.clip(np.round((np.asarray(image) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def signed_batch(images, size: int) -> np.ndarray:
  """uint8 HWC images → one float32 NHWC batch in [-1, 1], each centre-cropped and resized to
  `size` (how evaluation sees real images at a stage's resolution)."""
  return np.stack([to_signed(square_resize(np.asarray(im), size)) for im in images])


def bicubic_upsample(images: np.ndarray, size: int) -> np.ndarray:
  """Bicubic upsampling of a float NHWC batch in [-1, 1] to `size` (through uint8, as a user's
  PNG would be): the baseline every SR stage is compared with."""
  return np.stack([to_signed(resize(from_signed(x), size)) for x in images])
