"""Released pretrained models as cascade stages: DeepFloyd IF (`deepfloyd_if`)."""

from imagen_jax.pretrained.deepfloyd_if import (IFDenoiser, IFStage, IFTextEncoder,
                                                load_if_cascade, load_if_stage,
                                                load_if_text_encoder, upsample_align_corners)

__all__ = ["IFDenoiser", "IFStage", "IFTextEncoder", "load_if_cascade", "load_if_stage",
           "load_if_text_encoder", "upsample_align_corners"]
