"""Line plots as PNG with Pillow alone (the benchmarks run in the core install: no matplotlib).

    line_plot("curve.png", {"base64": (steps, losses)}, title="training loss", xlabel="step",
              ylabel="loss", logy=True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
          (140, 86, 75), (227, 119, 194), (127, 127, 127)]


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
  if hi <= lo:
    return [lo]
  raw = (hi - lo) / n
  mag = 10 ** math.floor(math.log10(raw))
  step = min((m * mag for m in (1, 2, 5, 10) if m * mag >= raw), default=10 * mag)
  first = math.ceil(lo / step) * step
  return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
  if v == int(v) and abs(v) < 1e6:
    return str(int(v))
  return f"{v:.3g}"


def line_plot(path: str | Path, series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
              title: str = "", xlabel: str = "", ylabel: str = "", logx: bool = False,
              logy: bool = False, size: tuple[int, int] = (720, 440)) -> Path:
  """One line (with point markers) per series; log axes plot log10 of positive values."""
  fx = (lambda v: math.log10(v)) if logx else (lambda v: v)
  fy = (lambda v: math.log10(v)) if logy else (lambda v: v)
  pts = {name: [(fx(x), fy(y)) for x, y in zip(*xy) if (x > 0 or not logx) and (y > 0 or not logy)
                and math.isfinite(y)] for name, xy in series.items()}
  allx = [p[0] for v in pts.values() for p in v] or [0.0, 1.0]
  ally = [p[1] for v in pts.values() for p in v] or [0.0, 1.0]
  x0, x1 = min(allx), max(allx)
  y0, y1 = min(ally), max(ally)
  if x1 == x0:
    x0, x1 = x0 - 1, x1 + 1
  pad = 0.05 * (y1 - y0 or 1.0)
  y0, y1 = y0 - pad, y1 + pad
  w, h = size
  left, right, top, bottom = 70, 20, 30, 50
  img = Image.new("RGB", size, (255, 255, 255))
  d = ImageDraw.Draw(img)
  font = ImageFont.load_default()
  px = lambda x: left + (x - x0) / (x1 - x0) * (w - left - right)
  py = lambda y: h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom)
  d.rectangle([left, top, w - right, h - bottom], outline=(0, 0, 0))
  for t in _ticks(x0, x1):
    d.line([px(t), h - bottom, px(t), h - bottom + 4], fill=(0, 0, 0))
    label = _fmt(10 ** t if logx else t)
    d.text((min(px(t) - 3 * len(label), w - 6 * len(label) - 2), h - bottom + 6), label,
           fill=(0, 0, 0), font=font)
  for t in _ticks(y0, y1):
    d.line([left - 4, py(t), w - right, py(t)], fill=(225, 225, 225))
    d.text((4, py(t) - 6), _fmt(10 ** t if logy else t), fill=(0, 0, 0), font=font)
  # the title centred, clear of the y label at the top left
  d.text((max((w - len(title) * 6) // 2, 8 + 6 * len(ylabel) + 16), 8), title, fill=(0, 0, 0),
         font=font)
  d.text(((w - len(xlabel) * 6) // 2, h - 18), xlabel + (" (log)" if logx else ""),
         fill=(0, 0, 0), font=font)
  d.text((4, top - 20), ylabel + (" (log)" if logy else ""), fill=(0, 0, 0), font=font)
  for i, (name, p) in enumerate(pts.items()):
    color = COLORS[i % len(COLORS)]
    xy = [(px(x), py(y)) for x, y in sorted(p)]
    if len(xy) > 1:
      d.line(xy, fill=color, width=2)
    for x, y in xy:
      d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
    d.line([w - right - 150, top + 12 + 14 * i, w - right - 130, top + 12 + 14 * i], fill=color,
           width=3)
    d.text((w - right - 125, top + 6 + 14 * i), name, fill=(0, 0, 0), font=font)
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  img.save(path)
  return path
