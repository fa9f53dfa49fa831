"""Summaries and the printed table of `python -m benchmarks.peers` (pure Python, no jax/torch)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any


def median(values: Sequence[float]) -> float:
  """The median; NaN for no values."""
  values = [v for v in values if v is not None and not math.isnan(v)]
  return statistics.median(values) if values else float("nan")


def ratio(ours: float, peer: float) -> float:
  """ours/peer; NaN when either is missing or the peer's value is 0."""
  if ours is None or peer is None or math.isnan(ours) or math.isnan(peer) or peer == 0:
    return float("nan")
  return ours / peer


def gflops_per_s(flops: float | None, seconds: float) -> float:
  if not flops or seconds is None or math.isnan(seconds) or seconds <= 0:
    return float("nan")
  return flops / seconds / 1e9


def summarise(rep_times: Sequence[Sequence[float]]) -> dict[str, float]:
  """Per repetition the median of its timed calls; then the median, min and max over repetitions."""
  per_rep = [median(t) for t in rep_times if t]
  return {"median_s": median(per_rep), "min_s": min(per_rep) if per_rep else float("nan"),
          "max_s": max(per_rep) if per_rep else float("nan"), "reps": len(per_rep)}


def group_rows(entries: Sequence[dict[str, Any]], roof_gflops: float | None,
               ratios: bool = True) -> list[dict[str, Any]]:
  """Table rows of one group. `entries`: dicts with 'label', 'median_s', 'min_s', 'flops',
  'params', 'peak_rss_mb', 'baseline_rss_mb'; the first is the reference of the ratios.

  'ratio' = reference time / this entry's time for every row but the first (for a group led by
  ours: ours/peer, so < 1 means ours is faster), and 'speedup' its inverse (both NaN when not
  `ratios`).
  """
  rows = []
  ref = entries[0]["median_s"] if entries else float("nan")
  for i, e in enumerate(entries):
    rate = gflops_per_s(e.get("flops"), e["median_s"])
    row = dict(e)
    row["gflop"] = e["flops"] / 1e9 if e.get("flops") else float("nan")
    row["gflop_per_s"] = rate
    row["roof_share"] = rate / roof_gflops if roof_gflops and not math.isnan(rate) else float("nan")
    row["ratio"] = ratio(ref, e["median_s"]) if i and ratios else float("nan")
    row["speedup"] = ratio(e["median_s"], ref) if i and ratios else float("nan")
    rows.append(row)
  return rows


def _fmt(value: Any, fmt: str) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "–"
  return fmt.format(value)


COLUMNS = (  # (header, key, format)
  ("group", "group", "{}"),
  ("entry", "label", "{}"),
  ("params", "params_m", "{:.2f}M"),
  ("GFLOP/call", "gflop", "{:.1f}"),
  ("median ms", "median_ms", "{:.1f}"),
  ("min ms", "min_ms", "{:.1f}"),
  ("reps", "reps", "{}"),
  ("ratio", "ratio", "{:.2f}"),
  ("speed-up", "speedup", "{:.2f}×"),
  ("GFLOP/s", "gflop_per_s", "{:.1f}"),
  ("% roof", "roof_pct", "{:.0f}%"),
  ("peak RSS MB", "peak_rss_mb", "{:.0f}"),
  ("Δ RSS MB", "delta_rss_mb", "{:.0f}"),
)


def _display(row: dict[str, Any]) -> dict[str, Any]:
  d = dict(row)
  d["params_m"] = row["params"] / 1e6 if row.get("params") else float("nan")
  d["median_ms"] = row["median_s"] * 1e3
  d["min_ms"] = row["min_s"] * 1e3
  d["roof_pct"] = row["roof_share"] * 100
  peak, base = row.get("peak_rss_mb"), row.get("baseline_rss_mb")
  d["delta_rss_mb"] = peak - base if peak is not None and base is not None else float("nan")
  return d


def format_table(rows: Sequence[dict[str, Any]], columns=COLUMNS) -> str:
  """A Markdown table; the group name is printed on the first row of each group only."""
  cells = [[h for h, _, _ in columns]]
  last_group = None
  for row in rows:
    d = _display(row)
    line = [_fmt(d.get(key), fmt) for _, key, fmt in columns]
    if d.get("group") == last_group:
      line[0] = ""
    last_group = d.get("group")
    cells.append(line)
  widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
  left = {0, 1}
  line = lambda r: "| " + " | ".join(c.ljust(w) if i in left else c.rjust(w)
                                     for i, (c, w) in enumerate(zip(r, widths))) + " |"
  rule = "|" + "|".join(("-" * (w + 1) + ":") if i not in left else (":" + "-" * (w + 1))
                        for i, w in enumerate(widths)) + "|"
  return "\n".join([line(cells[0]), rule, *map(line, cells[1:])])
