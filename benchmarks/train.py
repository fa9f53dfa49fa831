"""Training-step throughput of the tiny stage configs on 1 and 8 (virtual) devices.

    python -m benchmarks.train                       # base64:tiny and sr256:tiny, 1 and 8 devices
    python -m benchmarks.train --stages base64 --devices 1 --batch-size 16 --steps 20
    python -m benchmarks.train --stages base64 --devices 1 --resolution 32 \
        --set model.efficient=true --set diffusion.prediction=v      # the demo's base stage

Each case runs in its own process (so the device count and the peak RSS are its own): the train
state is created sharded on a `data`-only mesh, the jitted, donated train step runs on random
batches of the stage's shapes (the input pipeline is measured by benchmarks/data_pipeline.py), and
the median step time after warm-up gives steps/s and images/s. On this CPU "8 devices" are 8 XLA
host devices sharing 2 cores: the figure shows the cost of the sharded program, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(stage: str, batch: int, steps: int, resolution: int | None,
            overrides: list[str] = ()) -> dict:
  import flax.linen as nn
  import jax
  import numpy as np

  from imagen_jax import sharding as shd
  from imagen_jax.configlib import apply_overrides, load_config
  from imagen_jax.train.loop import example_inputs, optimizer_config, step_config
  from imagen_jax.models.unet import UNet
  from imagen_jax.train.state import create_sharded_state, learning_rate, make_optimizer
  from imagen_jax.train.step import make_train_step

  config = load_config(str(ROOT / "configs" / f"{stage}.py:tiny"))
  if resolution:
    apply_overrides(config, [f"resolution={resolution}"] + (
        [f"lowres_resolution={resolution // 4}"] if config.lowres_resolution else []))
  apply_overrides(config, list(overrides))
  config.train.batch_size = batch
  mesh = shd.make_mesh({"data": -1})
  step_cfg = step_config(config)
  opt_cfg = optimizer_config(config.train)
  optimizer = make_optimizer(opt_cfg)
  args, extra = example_inputs(config, 16)
  state, shardings = create_sharded_state(
      lambda k: UNet(step_cfg.model).init(k, *args, **extra)["params"], optimizer, 0, mesh,
      shd.DEFAULT_RULES)
  rng = np.random.default_rng(0)
  size = config.resolution
  host = {"image": rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32),
          "text_embeddings": rng.standard_normal((batch, 16, config.model.text_dim)).astype(
              np.float32),
          "text_mask": np.ones((batch, 16), bool)}
  if config.lowres_resolution:
    low = config.lowres_resolution
    host["lowres"] = rng.uniform(-1, 1, (batch, low, low, 3)).astype(np.float32)
  batch_sh = {k: shd.batch_sharding(mesh, v.ndim) for k, v in host.items()}
  step = make_train_step(step_cfg, optimizer, learning_rate(opt_cfg))
  with jax.set_mesh(mesh), nn.logical_axis_rules(shd.DEFAULT_RULES):
    fn = jax.jit(step, in_shardings=(shardings, batch_sh),
                 out_shardings=(shardings, shd.replicated(mesh)), donate_argnums=(0,))
    data = jax.device_put(host, batch_sh)
    t0 = time.perf_counter()
    compiled = fn.lower(state, data).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    times = []
    for i in range(steps + 2):
      t = time.perf_counter()
      state, metrics = compiled(state, data)
      jax.block_until_ready(metrics["loss"])
      if i >= 2:
        times.append(time.perf_counter() - t)
  sec = statistics.median(times)
  params = sum(int(x.size) for x in jax.tree.leaves(state.params))
  return {"stage": stage, "devices": jax.device_count(), "batch": batch, "resolution": size,
          "params_m": params / 1e6, "compile_s": compile_s, "step_ms": 1e3 * sec,
          "steps_per_s": 1 / sec, "images_per_s": batch / sec, "gflop_per_step": flops / 1e9,
          "gflop_per_s": flops / 1e9 / sec,
          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--stages", default="base64,sr256")
  parser.add_argument("--devices", default="1,8")
  parser.add_argument("--batch-size", type=int, default=16)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--resolution", type=int, default=0,
                      help="override the stage resolution (0: base 64, sr 256 as configured)")
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="override of the stage config, e.g. model.efficient=true (repeatable)")
  parser.add_argument("--_worker", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args._worker:
    print(json.dumps(measure(args._worker, args.batch_size, args.steps, args.resolution or None,
                             args.set)))
    return
  rows = []
  for stage in args.stages.split(","):
    for devices in (int(d) for d in args.devices.split(",")):
      env = {**os.environ, "JAX_PLATFORMS": "cpu",
             "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
      cmd = [sys.executable, "-m", "benchmarks.train", f"--_worker={stage}",
             f"--batch-size={args.batch_size}", f"--steps={args.steps}",
             f"--resolution={args.resolution}"] + [f"--set={o}" for o in args.set]
      out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
      rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
      print(f"[{stage} on {devices} devices] done", file=sys.stderr, flush=True)
  header = ("stage", "devices", "batch", "resolution", "params_m", "compile_s", "step_ms",
            "steps_per_s", "images_per_s", "gflop_per_step", "gflop_per_s", "peak_rss_mb")
  print("| " + " | ".join(header) + " |")
  print("|" + "---|" * len(header))
  for r in rows:
    print("| " + " | ".join(f"{r[h]:.2f}" if isinstance(r[h], float) else str(r[h])
                            for h in header) + " |")


if __name__ == "__main__":
  main()
