"""Side-by-side benchmarks against the peers (issue 9): imagen_jax, lucidrains' imagen-pytorch and
Hugging Face diffusers on BENCH-A, in one run, alternating. See README.md here.

  spec.py          BENCH-A, its inputs, the cases and groups
  harness.py       the run: worker processes, alternation, medians, the table (`python -m ...`)
  worker.py        one entry in a process of its own (line protocol on stdin/stdout)
  ours.py          imagen_jax's code paths      imagen_pt.py / diffusers_pt.py   the peers'
  roof.py          the fp32 matmul roof         flops.py   FLOPs counted alike for all
  peer_env.py      imagen-pytorch offline: torchvision stand-in, local hub config
  stats.py         medians, ratios, the printed table
  profile.py       where ours spends BENCH-A's time: conv kernels, parts of the U-Net ablated
"""
