"""The cascade: text → base image → super-resolution stages, loaded from a training workdir.

    from imagen_jax.cascade import load_cascade, SamplingOptions
    cascade = load_cascade("W")                      # every trained stage under W/, EMA weights
    images = cascade.sample(["a red circle"], seed=0, options={"base64": SamplingOptions(5.0)})
    images["base64"], images["sr256"]                # float32 NHWC in [-1, 1], per stage

A workdir holds one folder per stage (`base64`, `sr256`, `sr1024`, or any `config.stage`), each with
`config.json` and Orbax checkpoints. Stages are chained by resolution: each SR stage's
`lowres_resolution` must be the previous stage's resolution. Prompts are encoded with the text
encoder the stages were trained with (`config.text.encoder`, or the embedded tiny T5 in
`W/text/default_t5`), and its fingerprint is checked against the training cache. Every stage's
sampler is compiled once per batch shape and reused (the guidance weight is a traced argument).

A stage is anything with the small interface of `CascadeStage`: its name, resolution and
low-resolution input size, parameters, and what sampling it needs — its denoiser, schedule,
prediction and sampler config for given `SamplingOptions` (`StageSampling`), its unconditional
(null) conditioning for classifier-free guidance, and its conditioning on the previous stage's
images. `Stage` is a stage trained here; DeepFloyd IF's released stages
(`imagen_jax.pretrained.deepfloyd_if`, `load_if_cascade`) are the other kind. `Cascade.sample` and
`Cascade.repair` only talk to that interface.
"""

from imagen_jax.cascade.sampling import (KNOWN_STAGES, TRAINED_STAGE_DEFAULTS, Cascade,
                                         CascadeError, CascadeStage, SamplingOptions, Stage,
                                         StageSampling, chain_stages, resize_images)
from imagen_jax.cascade.workdir import (check_trained_encoder, continuation_stage_dirs,
                                        continue_cascade, encoder_for, load_cascade, load_stage,
                                        read_stage_config, set_negative_text, stage_dirs,
                                        workdir_stage_dirs)

__all__ = ["KNOWN_STAGES", "TRAINED_STAGE_DEFAULTS", "Cascade", "CascadeError", "CascadeStage",
           "SamplingOptions", "Stage", "StageSampling", "chain_stages", "check_trained_encoder",
           "continuation_stage_dirs", "continue_cascade", "encoder_for", "load_cascade",
           "load_stage", "read_stage_config", "resize_images", "set_negative_text", "stage_dirs",
           "workdir_stage_dirs"]
