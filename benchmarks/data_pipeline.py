"""Input-pipeline throughput (issue 5): `python -m benchmarks.data_pipeline`.

Builds the embedded `shapes` dataset at 64 px and 256 px into a temporary directory (or
`--data-dir`), encodes its captions with the embedded tiny T5 at 16 tokens into an embedding cache
(float32 storage), and times `imagen_jax.data.make_pipeline` at the tiny stage sizes:

  * base 64×64 with text (16 tokens), and the same without the embedding join;
  * SR 256 with a 64×64 low-res image (delivered at 64, the default, and upsampled to 256 on the
    host), and SR 256 trained on 128×128 crops (32×32 low-res crops);

each with 0 (inline) and `--threads` read-ahead threads. Throughput is steady state: the first
`--warmup` batches are not timed, then `--batches` batches are. A single host (process 0 of 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

from imagen_jax.data import PipelineConfig, build_dataset, make_pipeline, open_split
from imagen_jax.text.cache import EmbeddingCache
from imagen_jax.text.default import build_default_t5
from imagen_jax.text.encode import encode_captions
from imagen_jax.text.encoder import TextEncoder
from imagen_jax.text.sources import caption_source


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  dataset: str  # "64" or "256"
  config: PipelineConfig
  text: bool = True


def cases(batch_base: int, batch_sr: int, threads: int) -> list[Case]:
  out = []
  for t in sorted({0, threads}):
    out += [
        Case("base64", "64", PipelineConfig(batch_base, 64, num_threads=t)),
        Case("base64 (no text)", "64", PipelineConfig(batch_base, 64, num_threads=t), text=False),
        Case("sr256", "256", PipelineConfig(batch_sr, 256, lowres_size=64, num_threads=t)),
        Case("sr256 upsampled lowres", "256",
             PipelineConfig(batch_sr, 256, lowres_size=64, upsample_lowres=True, num_threads=t)),
        Case("sr256 crop128", "256",
             PipelineConfig(batch_sr, 256, lowres_size=64, crop_size=128, num_threads=t)),
    ]
  return out


def prepare(data_dir: Path, num_64: int, num_256: int) -> dict[str, tuple[Path, EmbeddingCache]]:
  """The two shapes datasets and their train-split embedding caches (16 tokens)."""
  built = {"64": build_dataset("shapes", data_dir, resolution=64, num_train=num_64, num_test=8),
           "256": build_dataset("shapes", data_dir, resolution=256, num_train=num_256,
                                num_test=8)}
  captions = [c for b in built.values() for _, c in caption_source(f"tfds:{b.directory}", "train")]
  t5 = data_dir / "t5"
  if not (t5 / "config.json").exists():
    build_default_t5(t5, captions)
  encoder = TextEncoder.from_directory(t5, max_length=16, batch_size=256)
  out = {}
  for key, b in built.items():
    cache_dir = data_dir / f"cache{key}"
    encode_captions(caption_source(f"tfds:{b.directory}", "train"), encoder, cache_dir,
                    storage_dtype="float32", progress=False)
    out[key] = (b.directory, EmbeddingCache(cache_dir))
  return out


def measure(case: Case, data: dict[str, tuple[Path, EmbeddingCache]], warmup: int,
            batches: int) -> dict[str, float]:
  directory, cache = data[case.dataset]
  ds = make_pipeline(open_split(directory, "train"), case.config, cache if case.text else None,
                     process_index=0, process_count=1)
  it = iter(ds)
  for _ in range(warmup):
    batch = next(it)
  start = time.perf_counter()
  for _ in range(batches):
    batch = next(it)
  seconds = time.perf_counter() - start
  mb = sum(v.nbytes for v in batch.values()) / 2**20
  return {"examples_s": batches * case.config.batch_size / seconds,
          "ms_batch": 1e3 * seconds / batches, "mb_batch": mb}


def fmt_config(c: PipelineConfig) -> str:
  parts = [f"{c.resolution}px"]
  if c.lowres_size:
    parts.append(f"lowres {c.lowres_size}" + (" →up" if c.upsample_lowres else ""))
  if c.crop_size:
    parts.append(f"crop {c.crop_size}")
  return ", ".join(parts)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data-dir", help="reuse/build datasets here (default: a temporary dir)")
  parser.add_argument("--num-64", type=int, default=2048, help="64 px training examples")
  parser.add_argument("--num-256", type=int, default=512, help="256 px training examples")
  parser.add_argument("--batch-base", type=int, default=64)
  parser.add_argument("--batch-sr", type=int, default=16)
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--batches", type=int, default=20)
  args = parser.parse_args(argv)
  logging.getLogger("absl").setLevel(logging.ERROR)
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = Path(args.data_dir or tmp)
    t0 = time.perf_counter()
    data = prepare(data_dir, args.num_64, args.num_256)
    print(f"datasets + caches prepared in {time.perf_counter() - t0:.1f} s "
          f"({platform.processor() or platform.machine()}, {os.cpu_count()} cpus)")
    rows = []
    for case in cases(args.batch_base, args.batch_sr, args.threads):
      r = measure(case, data, args.warmup, args.batches)
      rows.append((case.name, fmt_config(case.config), "16" if case.text else "-",
                   case.config.batch_size, case.config.num_threads, f"{r['examples_s']:.0f}",
                   f"{r['ms_batch']:.1f}", f"{r['mb_batch']:.1f}"))
  header = ("case", "output", "tokens", "batch", "threads", "examples/s", "ms/batch", "MB/batch")
  widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
  line = lambda cells: "| " + " | ".join(
      str(c).rjust(w) for c, w in zip(cells, widths)) + " |"
  print(line(header))
  print("|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
  for row in rows:
    print(line(row))


if __name__ == "__main__":
  main()
