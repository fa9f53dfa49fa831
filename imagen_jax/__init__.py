"""imagen_jax: Imagen (Saharia et al. 2022) in JAX/Flax, TPU-first."""

__version__ = "0.1.0"
