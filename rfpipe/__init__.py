"""rfpipe: serve RF-DETR detectors fast, with network inputs bit-identical to the reference chain."""

from rfpipe.config import ConfigError, ImageSize, ModelConfig, load_config
from rfpipe.detections import Detections
from rfpipe.detector import Detector
from rfpipe.geometry import Overrides, PreprocessMetadata, StaticCropOffset
from rfpipe.postprocess import postprocess
from rfpipe.preprocess import preprocess
from rfpipe.preprocess.cuda import pinned_frame

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "Detections",
    "Detector",
    "ImageSize",
    "ModelConfig",
    "Overrides",
    "PreprocessMetadata",
    "StaticCropOffset",
    "load_config",
    "pinned_frame",
    "postprocess",
    "preprocess",
]
