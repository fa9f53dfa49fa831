"""Datasets and the input pipeline: TFDS builders (array_record, no TensorFlow) and grain.

See imagen_jax/data/README.md for the datasets, their features and how to build them.
"""

from imagen_jax.data.builders import BUILDERS, BuildResult, build_dataset, dataset_metadata
from imagen_jax.data.pipeline import DataError, PipelineConfig, make_pipeline, open_split

__all__ = ["BUILDERS", "BuildResult", "DataError", "PipelineConfig", "build_dataset",
           "dataset_metadata", "make_pipeline", "open_split"]
