"""imagen_jax: Imagen (Saharia et al. 2022) in JAX/Flax, TPU-first."""

from imagen_jax.xla_cpu import apply_cpu_defaults as _apply_cpu_defaults
from imagen_jax.xla_cpu import skip_absent_tpu as _skip_absent_tpu

__version__ = "0.1.0"

# Before JAX starts (see imagen_jax/xla_cpu.py): XLA:CPU convolution kernels, and JAX kept off the
# TPU backend where libtpu is installed but no TPU is attached — so the command line, the demo,
# notebooks and benchmarks start without libtpu's initialisation errors on a CPU machine.
_apply_cpu_defaults()
_skip_absent_tpu()
