"""Where BENCH-A's time goes in ours: `python -m benchmarks.peers.profile {convs,ablate}`.

    python -m benchmarks.peers.profile convs              # conv kernels: YNNPACK vs Eigen
    python -m benchmarks.peers.profile ablate --case forward --rounds 3

`convs`: each 3×3 convolution shape of BENCH-A (batch 16) — forward, input gradient and kernel
gradient, jitted alone — once with jaxlib's default (convolutions in YNNPACK) and once with
`imagen_jax.xla_cpu`'s flag (convolutions in XLA's Eigen kernels), each in its own process.

`ablate`: our BENCH-A U-Net's forward (or train step) with parts taken out, to see what they cost:
`full`; `no-groupnorm` (GroupNorm → its affine map alone); `no-silu` (SiLU → identity);
`no-attention` (the attention blocks → identity); `convs-only` (all three). Each variant runs in
its own process (the parts are swapped in `imagen_jax.models.layers` before tracing); variants
take turns round by round, so a slow moment of the machine hits all of them alike. The
FLOPs column says what is left of the work.

Both print markdown tables; times are the median of `--calls` calls after 2 warm-up calls, and
for `ablate` the median over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
YNN_CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
VARIANTS = ("full", "no-groupnorm", "no-silu", "no-attention", "convs-only")
CONV_SHAPES = ((32, 64, 64), (32, 192, 64), (16, 128, 128), (16, 384, 128), (8, 256, 256),
               (8, 512, 256))


def _time(fn, *args, calls: int) -> float:
  import jax

  jax.block_until_ready(fn(*args))
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


# --- convs ---------------------------------------------------------------------------------------


def conv_worker(calls: int) -> list[dict]:
  import jax
  import numpy as np

  dn = ("NHWC", "HWIO", "NHWC")
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)
  rows = []
  for size, cin, cout in CONV_SHAPES:
    rng = np.random.default_rng(0)
    x = jax.numpy.asarray(rng.standard_normal((16, size, size, cin), np.float32))
    w = jax.numpy.asarray(rng.standard_normal((3, 3, cin, cout), np.float32) * 0.05)
    dy = jax.numpy.asarray(rng.standard_normal((16, size, size, cout), np.float32))
    flops = 2 * 16 * size * size * cin * cout * 9
    fns = {"forward": (jax.jit(conv), (x, w)),
           "input grad": (jax.jit(lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0]),
                          (x, w, dy)),
           "kernel grad": (jax.jit(lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0]),
                           (x, w, dy))}
    for what, (fn, args) in fns.items():
      t = _time(fn, *args, calls=calls)
      rows.append({"shape": f"{size}² {cin}→{cout}", "op": what, "ms": t * 1e3,
                   "gflop_s": flops / t / 1e9})
  return rows


def run_convs(args) -> None:
  results = {}
  for backend, flags in (("YNNPACK (jaxlib default)", ""), ("Eigen (imagen_jax default)",
                                                             YNN_CONV_FLAG)):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags,
           "IMAGEN_JAX_XLA_CPU_DEFAULTS": "0"}
    out = subprocess.run([sys.executable, "-m", "benchmarks.peers.profile", "_conv_worker",
                          "--calls", str(args.calls)], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout
    results[backend] = json.loads(out.strip().splitlines()[-1])
  names = list(results)
  print(f"| shape (batch 16) | op | {names[0]} ms | GFLOP/s | {names[1]} ms | GFLOP/s | speed-up |")
  print("|---|---|---:|---:|---:|---:|---:|")
  for a, b in zip(*results.values()):
    print(f"| {a['shape']} | {a['op']} | {a['ms']:.1f} | {a['gflop_s']:.0f} | {b['ms']:.1f} | "
          f"{b['gflop_s']:.0f} | {a['ms'] / b['ms']:.2f}× |")


# --- ablate --------------------------------------------------------------------------------------


def _patch(variant: str) -> None:
  """Swap parts of the U-Net for cheaper stand-ins (this process only, before tracing)."""
  import flax.linen as nn

  from imagen_jax.models import layers, unet

  if variant in ("no-groupnorm", "convs-only"):
    class AffineOnly(layers.GroupNorm):  # GroupNorm's parameters and affine map, no statistics
      @nn.compact
      def __call__(self, x):
        scale, bias = layers._GroupNormParams(x.shape[-1], self.param_dtype, name="GroupNorm_0")()
        return (x * scale + bias).astype(self.dtype)

    layers.GroupNorm = unet.GroupNorm = AffineOnly
  if variant in ("no-silu", "convs-only"):
    class NoSilu:  # `nn` as layers.py and unet.py see it, with SiLU as the identity
      def __getattr__(self, name):
        return (lambda x: x) if name == "silu" else getattr(nn, name)

    layers.nn = unet.nn = NoSilu()
  if variant in ("no-attention", "convs-only"):
    class Identity(layers.AttentionBlock):  # same fields as the real block, no parameters
      def __call__(self, x, text, mask):
        return x

    layers.AttentionBlock = unet.AttentionBlock = Identity


def ablate_worker(case: str, variant: str, calls: int) -> dict:
  _patch(variant)
  from benchmarks.peers import ours

  call, info = ours.build(case)
  call()
  call()
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
  return {"variant": variant, "ms": statistics.median(times) * 1e3, "gflop": info["flops"] / 1e9}


def run_ablate(args) -> None:
  variants = args.variants.split(",")
  for v in variants:
    if v not in VARIANTS:
      raise SystemExit(f"unknown variant {v!r}; choose among {','.join(VARIANTS)}")
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  per: dict[str, list[dict]] = {v: [] for v in variants}
  for r in range(args.rounds):
    order = variants[r % len(variants):] + variants[:r % len(variants)]
    for v in order:
      out = subprocess.run([sys.executable, "-m", "benchmarks.peers.profile", "_ablate_worker",
                            "--case", args.case, "--variant", v, "--calls", str(args.calls)],
                           cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
      per[v].append(json.loads(out.strip().splitlines()[-1]))
      print(f"[round {r}] {v}: {per[v][-1]['ms']:.0f} ms", file=sys.stderr, flush=True)
  full = statistics.median(x["ms"] for x in per[variants[0]])
  print(f"| {args.case} variant | GFLOP | median ms (over {args.rounds} rounds) | vs "
        f"{variants[0]} | GFLOP/s |")
  print("|---|---:|---:|---:|---:|")
  for v in variants:
    ms = statistics.median(x["ms"] for x in per[v])
    gflop = per[v][0]["gflop"]
    print(f"| {v} | {gflop:.1f} | {ms:.0f} | {ms - full:+.0f} ms | {gflop / ms * 1e3:.0f} |")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.peers.profile",
                                   description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  convs = sub.add_parser("convs", help="conv kernels: YNNPACK vs Eigen")
  convs.add_argument("--calls", type=int, default=10)
  ablate = sub.add_parser("ablate", help="the U-Net with parts taken out")
  ablate.add_argument("--case", choices=("forward", "train", "cfg_step"), default="forward")
  ablate.add_argument("--variants", default=",".join(VARIANTS))
  ablate.add_argument("--rounds", type=int, default=3)
  ablate.add_argument("--calls", type=int, default=8)
  worker = sub.add_parser("_conv_worker")
  worker.add_argument("--calls", type=int, default=10)
  aw = sub.add_parser("_ablate_worker")
  aw.add_argument("--case", required=True)
  aw.add_argument("--variant", required=True)
  aw.add_argument("--calls", type=int, default=8)
  args = parser.parse_args(argv)
  if args.command == "convs":
    run_convs(args)
  elif args.command == "ablate":
    run_ablate(args)
  elif args.command == "_conv_worker":
    print(json.dumps(conv_worker(args.calls)))
  else:
    print(json.dumps(ablate_worker(args.case, args.variant, args.calls)))


if __name__ == "__main__":
  main()
