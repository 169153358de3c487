"""rfpipe.postprocess equals inference-models 0.39.x's RF-DETR post-processing exactly, and its own rules hold.

The differential tests feed both the same random logits/boxes (ties and out-of-range boxes
included) with metadata planned for every resize mode, and compare integer boxes, class ids and
float32 confidences with `np.array_equal`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_raw_config
from model_packages import require

import rfpipe
from rfpipe.geometry import ImageSize, plan_image, resolve_target_size

NAMES = ["person", "car", "dog", "cat", "bird"]

# name -> (config kwargs, class_names_operations removals)
CONFIGS = {
    "stretch": dict(size=(96, 80)),
    "stretch-static-crop": dict(size=(80, 64), static_crop=(10, 5, 90, 78)),
    "letterbox": dict(mode="letterbox", size=(96, 96), dataset=(128, 96)),
    "letterbox-static-crop": dict(mode="letterbox", size=(64, 64), dataset=(96, 72), static_crop=(25, 0, 75, 100)),
    "center-crop-smaller": dict(mode="center-crop", size=(64, 64), dataset=(101, 77)),
    "center-crop-larger": dict(mode="center-crop", size=(96, 96), dataset=(1601, 1333)),
    "center-crop-static-crop": dict(mode="center-crop", size=(64, 64), dataset=(150, 50), static_crop=(3, 7, 97, 93)),
    "dynamic-divisible": dict(size=(64, 64), dynamic={"type": "pad-to-be-divisible", "value": 32}),
}
SOURCES = [(3, 2), (37, 211), (640, 480), (1920, 1080), (333, 999), (3840, 2160)]


def _config(name: str, removed: tuple[str, ...] = ()) -> rfpipe.ModelConfig:
    raw = make_raw_config(**CONFIGS[name])
    if removed:
        raw["class_names_operations"] = [{"type": "class_name_removal", "class_name": n} for n in removed]
    return rfpipe.ModelConfig.from_dict(raw, class_names=NAMES)


def _metadata(config: rfpipe.ModelConfig, rng: np.random.Generator, batch: int) -> list[rfpipe.PreprocessMetadata]:
    image_size = (100, 70) if config.dynamic_size_supported else None
    target = resolve_target_size(config, image_size)
    sizes = [SOURCES[int(rng.integers(len(SOURCES)))] for _ in range(batch)]
    return [plan_image(config, ImageSize(*s), target).metadata for s in sizes]


def _outputs(rng: np.random.Generator, batch: int, queries: int, columns: int) -> tuple[torch.Tensor, torch.Tensor]:
    logits = rng.normal(0, 2.5, (batch, queries, columns)).astype(np.float32)
    # Ties: coarse values repeat, and large logits saturate the sigmoid to exactly 1.0.
    coarse = rng.random((batch, queries, columns)) < 0.3
    logits[coarse] = np.round(logits[coarse])
    logits[rng.random((batch, queries, columns)) < 0.02] = 40.0
    centre = rng.uniform(-0.2, 1.2, (batch, queries, 2))
    extent = rng.uniform(0, 1.3, (batch, queries, 2))
    boxes = np.concatenate([centre, extent], -1).astype(np.float32)
    return torch.from_numpy(logits), torch.from_numpy(boxes)


class UpstreamPost:
    """inference-models' RF-DETR object-detection post-processing, called as its ONNX/torch models call it."""

    def __init__(self):
        from inference_models.entities import ImageDimensions
        from inference_models.models.common.roboflow.model_packages import (
            ClassNameRemoval,
            PreProcessingMetadata,
            StaticCropOffset,
        )
        from inference_models.models.rfdetr.class_remapping import (
            prepare_class_remapping,
        )
        from inference_models.models.rfdetr.common import (
            post_process_object_detection_results,
        )

        self.dims, self.meta, self.offset = ImageDimensions, PreProcessingMetadata, StaticCropOffset
        self.removal, self.remap, self.run = ClassNameRemoval, prepare_class_remapping, post_process_object_detection_results

    def _convert(self, m: rfpipe.PreprocessMetadata):
        def dims(size):
            return None if size is None else self.dims(height=size.height, width=size.width)

        return self.meta(
            m.pad_left, m.pad_top, m.pad_right, m.pad_bottom, dims(m.original_size),
            dims(m.size_after_pre_processing), dims(m.inference_size), m.scale_width, m.scale_height,
            self.offset(*m.static_crop_offset), dims(m.nonsquare_intermediate_size),
        )

    def __call__(self, logits, boxes, metadata, removed, threshold):
        names, remapping = list(NAMES), None
        if removed:
            ops = [self.removal(type="class_name_removal", class_name=n) for n in removed]
            names, remapping = self.remap(NAMES, ops, torch.device("cpu"))
        return self.run(
            bboxes=boxes, logits=logits, pre_processing_meta=[self._convert(m) for m in metadata],
            threshold=threshold, num_classes=len(names), classes_re_mapping=remapping, device=torch.device("cpu"),
        ), names


@pytest.fixture(scope="session")
def upstream_post():
    require("inference_models", "inference-models' post-processing is the oracle here", "RFPIPE_REQUIRE_ORACLE")
    return UpstreamPost()


def assert_same(ours: list[rfpipe.Detections], theirs, names) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert a.xyxy.dtype == np.int32 and a.confidence.dtype == np.float32
        assert np.array_equal(a.xyxy, b.xyxy.numpy())
        assert np.array_equal(a.class_id, b.class_id.numpy())
        assert np.array_equal(a.confidence, b.confidence.numpy())
        assert a.class_name == [names[i] for i in b.class_id.tolist()]


@pytest.mark.inference_models
@pytest.mark.parametrize("removed", [(), ("car",), ("person", "cat")], ids=["all", "no-car", "no-person-cat"])
@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_postprocess_equals_inference_models(upstream_post, config_name, removed):
    config = _config(config_name, removed)
    rng = np.random.default_rng(abs(hash((config_name, removed))) % 2**32)
    # columns: len(NAMES) + 1 no-object column, and one layout with extra unnamed columns.
    for columns, batch, threshold in [(6, 3, 0.4), (9, 2, 0.05), (6, 1, 0.0)]:
        logits, boxes = _outputs(rng, batch, 300, columns)
        metadata = _metadata(config, rng, batch)
        theirs, names = upstream_post(logits, boxes, metadata, removed, threshold)
        ours = rfpipe.postprocess(logits, boxes, metadata, config, confidence=threshold)
        assert sum(len(d) for d in ours) > 0
        assert_same(ours, theirs, names)


@pytest.mark.inference_models
def test_per_class_confidence_equals_inference_models(upstream_post):
    config = _config("letterbox", ("dog",))
    rng = np.random.default_rng(5)
    logits, boxes = _outputs(rng, 4, 300, 6)
    metadata = _metadata(config, rng, 4)
    per_class = [0.3, 0.9, 0.55, 0.05]  # person, car, cat, bird (dog removed)
    theirs, names = upstream_post(logits, boxes, metadata, ("dog",), torch.tensor(per_class))
    ours = rfpipe.postprocess(logits, boxes, metadata, config, confidence=per_class)
    assert_same(ours, theirs, names)
    by_name = rfpipe.postprocess(logits, boxes, metadata, config, confidence=dict(zip(names, per_class, strict=True)))
    assert_same(by_name, theirs, names)


def _one_box_config() -> rfpipe.ModelConfig:
    return rfpipe.ModelConfig.from_dict(make_raw_config(size=(100, 50)), class_names=["a", "b"])


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def test_confidence_is_strictly_above_threshold():
    config = _one_box_config()
    meta = [plan_image(config, ImageSize(200, 100), config.training_size).metadata]
    threshold = np.float32(0.5)
    logits = torch.full((1, 3, 3), -20.0)
    logits[0, 0, 0] = 0.0  # sigmoid exactly 0.5: not kept
    logits[0, 1, 1] = 0.001  # just above
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2]] * 3])
    (dets,) = rfpipe.postprocess(logits, boxes, meta, config, confidence=float(threshold))
    assert dets.class_id.tolist() == [1] and dets.class_name == ["b"]


def test_no_object_column_is_dropped():
    config = _one_box_config()
    meta = [plan_image(config, ImageSize(100, 50), config.training_size).metadata]
    logits = torch.full((1, 2, 3), -20.0)
    logits[0, 0, 2] = 5.0  # the third column has no name
    logits[0, 1, 0] = 4.0
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.25, 0.5, 0.1, 0.4]]])
    (dets,) = rfpipe.postprocess(logits, boxes, meta, config, confidence=0.5)
    assert dets.class_id.tolist() == [0]
    assert dets.xyxy.tolist() == [[20, 15, 30, 35]]


def test_boxes_round_half_to_even_and_clamp():
    config = _one_box_config()  # 100x50 network, stretch
    meta = [plan_image(config, ImageSize(100, 50), config.training_size).metadata]  # scale 1
    logits = torch.full((1, 2, 3), -20.0)
    logits[0, 0, 0] = 5.0
    logits[0, 1, 1] = 4.0
    # x0 = 100 * (0.25 - 0.5*0.25) = 12.5 -> 12; x1 = 37.5 -> 38; y0 = 50*0.05 = 2.5 -> 2 ...
    boxes = torch.tensor([[[0.25, 0.25, 0.25, 0.4], [0.95, 0.5, 0.3, 1.5]]])
    (dets,) = rfpipe.postprocess(logits, boxes, meta, config, confidence=0.5)
    assert dets.xyxy.tolist() == [[12, 2, 38, 22], [80, 0, 100, 50]]


def test_confidence_errors_name_the_problem():
    config = _one_box_config()
    meta = [plan_image(config, ImageSize(10, 10), config.training_size).metadata]
    logits, boxes = torch.zeros(1, 2, 3), torch.zeros(1, 2, 4)
    with pytest.raises(ValueError, match="one value per class"):
        rfpipe.postprocess(logits, boxes, meta, config, confidence=[0.1])
    with pytest.raises(ValueError, match="unknown classes"):
        rfpipe.postprocess(logits, boxes, meta, config, confidence={"zebra": 0.1})
    with pytest.raises(TypeError, match="must be a number"):
        rfpipe.postprocess(logits, boxes, meta, config, confidence="high")
    with pytest.raises(ValueError, match="metadata entries"):
        rfpipe.postprocess(logits, boxes, meta * 2, config)
    nameless = rfpipe.ModelConfig.from_dict(make_raw_config())
    with pytest.raises(ValueError, match="no class names"):
        rfpipe.postprocess(logits, boxes, meta, nameless)


def test_inference_json_and_supervision_conversions():
    dets = rfpipe.Detections(
        xyxy=np.array([[10, 20, 31, 60]], np.int32), confidence=np.array([0.75], np.float32),
        class_id=np.array([1], np.int32), class_name=["car"],
    )
    (pred,) = dets.to_inference_json()
    assert {k: pred[k] for k in ("x", "y", "width", "height", "confidence", "class", "class_id")} == {
        "x": 20.5, "y": 40.0, "width": 21.0, "height": 40.0, "confidence": 0.75, "class": "car", "class_id": 1,
    }
    assert len(pred["detection_id"]) == 36
    sv = pytest.importorskip("supervision")
    converted = dets.to_supervision()
    assert isinstance(converted, sv.Detections)
    assert converted.xyxy.tolist() == [[10.0, 20.0, 31.0, 60.0]]
    assert converted.data["class_name"].tolist() == ["car"]


def test_options_after_config_are_keyword_only():
    """`postprocess(logits, boxes, metadata, config, *, confidence=...)`, like `preprocess`."""
    config = rfpipe.ModelConfig.from_dict(make_raw_config(size=(100, 50)), class_names=["a", "b"])
    batch, meta = rfpipe.preprocess(np.zeros((50, 100, 3), np.uint8), config)
    logits, boxes = torch.zeros(1, 3, 2), torch.full((1, 3, 4), 0.5)
    with pytest.raises(TypeError):
        rfpipe.postprocess(logits, boxes, meta, config, 0.5)
    with pytest.raises(TypeError):
        rfpipe.preprocess(np.zeros((50, 100, 3), np.uint8), config, "cpu")
    with pytest.raises(TypeError):
        rfpipe.ModelConfig.from_dict(make_raw_config(size=(100, 50)), ["a", "b"])
    assert len(rfpipe.postprocess(logits, boxes, meta, config, confidence=0.0)[0]) == 3


def test_the_one_device_to_host_copy_keeps_every_value_bit_for_bit():
    from rfpipe.postprocess import _copy_packed

    generator = torch.Generator().manual_seed(3)
    scores = torch.rand((3, 300), generator=generator)
    scores[0, :4] = torch.tensor([0.0, -0.0, float("nan"), 1e-45])  # odd bit patterns survive too
    class_id = torch.randint(-1, 90, (3, 300), generator=generator)
    xyxy = torch.randint(-5, 5000, (3, 300, 4), generator=generator, dtype=torch.int32)
    keep = torch.rand((3, 300), generator=generator) > 0.5
    got = _copy_packed(scores, class_id, xyxy, keep)
    for want, have in zip((scores, class_id, xyxy, keep), got, strict=True):
        assert have.dtype == want.dtype and have.shape == want.shape
        assert torch.equal(have.view(torch.int32) if want.dtype == torch.float32 else have,
                           want.view(torch.int32) if want.dtype == torch.float32 else want)
