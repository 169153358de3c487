"""rfpipe: serve RF-DETR detectors fast, with network inputs bit-identical to the reference chain."""

from rfpipe.config import ConfigError, ImageSize, ModelConfig, load_config
from rfpipe.geometry import Overrides, PreprocessMetadata, StaticCropOffset
from rfpipe.preprocess import preprocess

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ImageSize",
    "ModelConfig",
    "Overrides",
    "PreprocessMetadata",
    "StaticCropOffset",
    "load_config",
    "preprocess",
]
