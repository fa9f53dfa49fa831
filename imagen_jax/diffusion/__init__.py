"""The diffusion core: schedules, objectives, guidance, samplers and repair (no model code here)."""

from imagen_jax.diffusion.guidance import (Thresholding, dynamic_threshold, guided_output,
                                           static_threshold)
from imagen_jax.diffusion.objectives import (LossConfig, NoiseAugmentation, convert_output,
                                             diffuse, diffusion_loss, loss_weight,
                                             regression_loss, target_from_x0_eps,
                                             x0_eps_from_output)
from imagen_jax.diffusion.repair import RePaint, jit_repair_sample, repair_sample, start_index
from imagen_jax.diffusion.samplers import (SamplerConfig, ddim_step, ddpm_step, dpmpp_2m_step,
                                           jit_sample, predict_x0_eps, sample)
from imagen_jax.diffusion.schedules import (CosineSchedule, DiscreteSchedule, LinearSchedule,
                                            alpha_sigma, get_schedule, stage_schedule)

__all__ = [
    "CosineSchedule", "DiscreteSchedule", "LinearSchedule", "LossConfig", "NoiseAugmentation",
    "RePaint", "SamplerConfig", "Thresholding", "alpha_sigma", "convert_output", "ddim_step",
    "ddpm_step", "diffuse", "diffusion_loss", "dpmpp_2m_step", "dynamic_threshold",
    "get_schedule", "guided_output", "jit_repair_sample", "jit_sample", "loss_weight",
    "predict_x0_eps", "regression_loss", "repair_sample", "sample", "stage_schedule",
    "start_index", "static_threshold", "target_from_x0_eps", "x0_eps_from_output",
]
