"""Will the paper's stages train at the paper's batch size (2048) on v4 and v5e slices?

    python -m benchmarks.plan_table                 # every case below (16–56 min each on 2 cores)
    python -m benchmarks.plan_table --cases 0 3     # some of them

Each case runs `imagen-jax plan` (the real train step, compiled ahead of time for the slice with
libtpu's compile-only topology; needs `pip install 'imagen-jax[plan]'`) in its own process and the
rows form the table in benchmarks/RESULTS.md: per-device state (parameters + EMA + optimiser),
XLA's temporaries (activations, gradients, collective buffers) and the peak, against the chip's
HBM. A case that cannot fit fails to compile with XLA's CompileTimeHbmOom; its figure is XLA's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (config, topology, mesh, extra overrides): 256 chips each — a v5e 16×16 pod (16 GiB HBM per
# chip) and a v4-512 slice 8×8×4 (32 GiB).
CASES = [
    ("base64", "v5e:16x16", "data=-1", []),
    ("base64", "v5e:16x16", "data=32,fsdp=8", ["model.remat=True"]),
    ("base64", "v4:8x8x4", "data=-1", []),
    ("sr256", "v5e:16x16", "data=-1", []),
    ("sr256", "v4:8x8x4", "data=-1", []),
    ("sr1024", "v5e:16x16", "data=-1", []),
    ("sr1024", "v4:8x8x4", "data=-1", []),
    ("base64", "v4:8x8x4", "data=32,fsdp=8", []),
    ("sr256", "v5e:16x16", "data=-1", ["model.remat=True"]),
    ("sr256", "v5e:16x16", "data=32,fsdp=8", ["model.remat=True"]),
    # whole 1024² images instead of the paper's 256² crops
    ("sr1024", "v5e:16x16", "data=-1", ["crop_size=0"]),
]


def run_case(config: str, topology: str, mesh: str, extra: list[str]) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp) / "plan.json"
    cmd = [sys.executable, "-m", "imagen_jax.cli", "plan", "--config", f"configs/{config}.py",
           "--topology", topology, "--mesh", mesh, "--no-sampler", "--json", str(out)]
    cmd += [f"--config.{o}" for o in extra]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.time() - start
    if not out.is_file():
      raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr[-3000:]}")
    plan = json.loads(out.read_text())
  gib = 2.0 ** 30
  sb = plan["state_bytes"]
  train = plan["train"]
  peak = None if train["oom"] else (train["arguments"] + train["temporaries"] + train["outputs"]
                                    - train["aliased"] + train["code"]) / gib
  temps = train["temporaries"] / gib
  if train["oom"]:
    found = re.search(r"temporaries \(([\d.]+)G\)", train["oom"])
    temps = float(found.group(1)) if found else float("nan")
    used = re.search(r"Used ([\d.]+)G of", train["oom"])
  replicas = plan["mesh"]["data"] * plan["mesh"]["fsdp"]
  return {"stage": config, "slice": f"{topology} ({plan['device_kind']})", "mesh": mesh,
          "options": " ".join(extra) or "-", "params M": round(plan["num_params"] / 1e6),
          "batch/replica": plan["batch_size"] // replicas,
          "params+EMA+opt GiB": round((sb["params"] + sb["ema"] + sb["optimizer"]) / gib, 2),
          "temporaries GiB": round(temps, 2),
          "peak GiB": "OOM" if peak is None else round(peak, 2),
          "HBM GiB": round(plan["hbm_bytes"] / gib, 2),
          "fits": "no" if train["oom"] or peak > plan["hbm_bytes"] / gib else "yes",
          "TFLOP/step/chip": "-" if train["oom"] else round(train["flops"] / 1e12, 1),
          "compile s": round(seconds),
          **({"XLA needs GiB": float(used.group(1)) if used else None, "XLA": train["oom"]}
             if train["oom"] else {})}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--cases", type=int, nargs="+", default=list(range(len(CASES))))
  parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
  args = parser.parse_args(argv)
  rows = []
  for i in args.cases:
    row = run_case(*CASES[i])
    print(json.dumps(row), flush=True)
    rows.append(row)
  if args.json:
    Path(args.json).write_text(json.dumps(rows, indent=2))
  keys = [k for k in rows[0] if k not in ("XLA needs GiB", "XLA")]
  print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
  for r in rows:
    print("| " + " | ".join(str(r[k]) for k in keys) + " |")
  for i, r in zip(args.cases, rows):
    if "XLA" in r:
      print(f"case {i}: {r['XLA']}")


if __name__ == "__main__":
  main()
