"""The diffusion core: schedules, objectives, guidance, samplers and repair (no model code here),
and the reading of diffusers scheduler configs (DeepFloyd IF's)."""

from imagen_jax.diffusion.diffusers_scheduler import (DiffusersScheduler, from_diffusers_config,
                                                      load_diffusers_config, timestep_from_logsnr)
from imagen_jax.diffusion.guidance import (Thresholding, dynamic_threshold, guided_output,
                                           static_threshold)
from imagen_jax.diffusion.objectives import (LossConfig, NoiseAugmentation, convert_output,
                                             diffuse, diffusion_loss, loss_weight,
                                             regression_loss, target_from_x0_eps,
                                             x0_eps_from_output)
from imagen_jax.diffusion.repair import RePaint, jit_repair_sample, repair_sample, start_index
from imagen_jax.diffusion.samplers import (SamplerConfig, ddim_step, ddpm_step, dpmpp_2m_step,
                                           jit_sample, learned_range_std, predict_x0_eps,
                                           predict_x0_eps_var, sample)
from imagen_jax.diffusion.schedules import (CosineSchedule, DiscreteSchedule, LinearSchedule,
                                            alpha_sigma, get_schedule, stage_schedule)

__all__ = [
    "CosineSchedule", "DiffusersScheduler", "DiscreteSchedule", "LinearSchedule", "LossConfig",
    "NoiseAugmentation", "RePaint", "SamplerConfig", "Thresholding", "alpha_sigma",
    "convert_output", "ddim_step", "ddpm_step", "diffuse", "diffusion_loss", "dpmpp_2m_step",
    "dynamic_threshold", "from_diffusers_config", "get_schedule", "guided_output",
    "jit_repair_sample", "jit_sample", "learned_range_std", "load_diffusers_config",
    "loss_weight", "predict_x0_eps", "predict_x0_eps_var", "regression_loss", "repair_sample",
    "sample", "stage_schedule", "start_index", "static_threshold", "target_from_x0_eps",
    "timestep_from_logsnr", "x0_eps_from_output",
]
