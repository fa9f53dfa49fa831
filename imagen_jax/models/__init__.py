"""Denoising networks: U-Net building blocks, attention, and the base / Efficient U-Nets."""

from imagen_jax.models.unet import UNet, UNetConfig, UNetDenoiser, null_text

__all__ = ["UNet", "UNetConfig", "UNetDenoiser", "null_text"]
