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


# --- a user's own image and mask (imagen-jax inpaint / img2img) ----------------------------------


def _eight_bit(image: Image.Image, notes: list[str], what: str) -> Image.Image:
  """16-bit and 32-bit integer modes (Pillow opens 16-bit grayscale PNGs as 'I;16' or 'I')
  scaled to 8 bits; other modes unchanged."""
  if image.mode in ("I;16", "I;16B", "I;16L", "I"):
    values = np.asarray(image, np.float64)
    top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
    notes.append(f"{what}: {image.mode} ({'16' if top > 255 else '8'}-bit) grayscale, scaled to "
                 "8 bits")
    return Image.fromarray(np.round(values / top * 255.0).clip(0, 255).astype(np.uint8), "L")
  return image


def _open(path, what: str, notes: list[str]) -> Image.Image:
  """A loaded Pillow image of a user's file, at 8 bits per channel; unreadable files are a
  ValueError naming the file."""
  try:
    with Image.open(path) as opened:
      image = _eight_bit(opened, notes, str(path))
      image.load()
  except (OSError, ValueError) as e:
    raise ValueError(f"cannot read {what} {path}: {e}") from e
  return image


def read_user_image(path) -> tuple[np.ndarray, list[str]]:
  """A user's square image as float32 HWC RGB in [−1, 1], and notes on what was converted.

  Grayscale is replicated to RGB, transparency composited on white, 16-bit scaled to 8 bits;
  a non-square image is refused (crop it yourself: which part matters is your choice)."""
  notes: list[str] = []
  image = _open(path, "image", notes)
  if image.mode in ("L", "LA", "1"):
    notes.append(f"{path}: grayscale, read as RGB")
  if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
    notes.append(f"{path}: transparency composited on white")
  width, height = image.size
  if width != height:
    raise ValueError(f"image {path} is {width}×{height}: the stages make square images; crop it "
                     f"to a square first (e.g. the centre {min(width, height)}×"
                     f"{min(width, height)})")
  return to_signed(np.asarray(to_rgb(image))), notes


def read_user_mask(path, size: tuple[int, int]) -> tuple[np.ndarray, list[str]]:
  """A user's inpainting mask as float32 HW, 1 where to fill (white, or any pixel brighter than
  50% grey) and 0 where to keep; transparency counts as keep (composited on black). `size` is
  the image's (height, width): a mask of another size is refused."""
  notes: list[str] = []
  mask = _open(path, "mask", notes)
  if (mask.size[1], mask.size[0]) != tuple(size):
    raise ValueError(f"mask {path} is {mask.size[0]}×{mask.size[1]} but the image is "
                     f"{size[1]}×{size[0]}: draw the mask on the image's canvas (white = fill)")
  gray = np.asarray(to_rgb(mask, background=(0, 0, 0)).convert("L"), np.float32)
  return (gray > 127.5).astype(np.float32), notes
