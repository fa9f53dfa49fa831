"""imagen_jax: Imagen (Saharia et al. 2022) in JAX/Flax, TPU-first."""

from imagen_jax.xla_cpu import apply_cpu_defaults as _apply_cpu_defaults

__version__ = "0.1.0"

_apply_cpu_defaults()  # XLA:CPU convolution kernels (see imagen_jax/xla_cpu.py); before JAX starts
