"""The whole Detector: loading, exactness against inference-models' own RF-DETR ONNX model, box mapping.

Uses the untrained RF-DETR Nano packages (320x320, built once and cached, see model_packages.py).
"""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from conftest import make_raw_config
from model_packages import packages, require  # noqa: F401  (session fixture)

import rfpipe

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket"]


class FakeBackend:
    """Returns chosen normalised cxcywh boxes, one confident query per box (class i % 2)."""

    name = "fake"
    device = torch.device("cpu")

    def __init__(self, columns: int = 3, queries: int = 8):
        self.columns, self.queries = columns, queries
        self.boxes: list[list[tuple[float, float, float, float]]] = []

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = batch.shape[0]
        logits = torch.full((n, self.queries, self.columns), -20.0)
        boxes = torch.zeros((n, self.queries, 4))
        for i, image_boxes in enumerate(self.boxes[:n]):
            for q, box in enumerate(image_boxes):
                logits[i, q, q % 2] = 10.0 - q  # distinct scores keep the output in query order
                boxes[i, q] = torch.tensor(box, dtype=torch.float64).float()
        return logits, boxes


def fake_detector(**config_kwargs) -> tuple[rfpipe.Detector, FakeBackend]:
    config = rfpipe.ModelConfig.from_dict(make_raw_config(**config_kwargs), class_names=["a", "b"])
    backend = FakeBackend()
    return rfpipe.Detector(config, backend), backend


# --- exactness against inference-models ----------------------------------------------------------


@pytest.fixture(scope="module")
def upstream_onnx():
    pytest.importorskip("inference_models", reason="inference-models is not installed")
    from inference_models.models.rfdetr.rfdetr_object_detection_onnx import (
        RFDetrForObjectDetectionONNX,
    )

    def load(path):
        return RFDetrForObjectDetectionONNX.from_pretrained(
            str(path), onnx_execution_providers=["CPUExecutionProvider"], device=torch.device("cpu"),
        )

    return load


@pytest.mark.inference_models
@pytest.mark.parametrize("package", ["stretch", "letterbox", "center-crop", "static-crop"])
def test_onnx_detector_equals_inference_models_onnx_model(packages, upstream_onnx, photos, package):  # noqa: F811
    """Same package, same photos (one mixed-size batch): identical boxes, classes and confidences."""
    theirs_model = upstream_onnx(packages[package])
    ours_model = rfpipe.Detector.load(packages[package], backend="onnx")
    assert ours_model.class_names == tuple(theirs_model.class_names)
    images = [photos[n] for n in PHOTOS]
    batch, meta = theirs_model.pre_process(images)
    their_outputs = theirs_model.forward(batch)
    our_batch, our_meta = ours_model.preprocess(images, implementation="reference")
    logits, boxes = ours_model.forward(our_batch)
    total = 0
    for confidence in (0.3, 0.5):
        theirs = theirs_model.post_process(their_outputs, meta, confidence=confidence)
        ours = ours_model.postprocess(logits, boxes, our_meta, confidence=confidence)
        for a, b in zip(ours, theirs, strict=True):
            assert np.array_equal(a.xyxy, b.xyxy.numpy())
            assert np.array_equal(a.class_id, b.class_id.numpy())
            assert np.array_equal(a.confidence, b.confidence.numpy())
            total += len(a)
    assert total > 10  # the comparison saw real detections


# --- loading -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_stretch(packages):  # noqa: F811
    return rfpipe.Detector.load(packages["stretch"], backend="torch")


def test_checkpoint_loads_with_its_resolution_names_and_weights(packages, torch_stretch, photos):  # noqa: F811
    model = rfpipe.Detector.load(packages["checkpoint"])
    assert model.backend_name == "torch"
    assert model.config.training_size == (320, 320)
    assert model.config.resize_mode.value == "stretch" and model.config.color_mode == "rgb"
    assert model.class_names == ("person", "bicycle", "car", "dog", "cat")
    batch, _ = model.preprocess(photos["chelsea"], implementation="reference")
    package_batch, _ = torch_stretch.preprocess(photos["chelsea"], implementation="reference")
    assert torch.equal(batch, package_batch)
    for ours, theirs in zip(model.forward(batch), torch_stretch.forward(batch), strict=True):
        assert torch.equal(ours, theirs)


def test_torch_and_onnx_backends_agree(packages, torch_stretch, photos):  # noqa: F811
    onnx_model = rfpipe.Detector.load(packages["stretch"], backend="onnx")
    batch, _ = onnx_model.preprocess([photos["rocket"], photos["coffee"]], implementation="reference")
    for a, b in zip(onnx_model.forward(batch), torch_stretch.forward(batch), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
        # Float rounding can swap which encoder proposals become queries, so compare in bulk.
        close = ((a - b).abs() < 1e-3).float().mean().item()
        assert close > 0.95, f"only {close:.1%} of outputs agree within 1e-3"


def test_auto_backend_on_cpu_prefers_onnx(packages):  # noqa: F811
    assert rfpipe.Detector.load(packages["letterbox"]).backend_name == "onnx"


def test_batches_over_the_package_limit_run_in_chunks(packages, tmp_path, photos):  # noqa: F811
    package = shutil.copytree(packages["stretch"], tmp_path / "limited")
    config = json.loads((package / "inference_config.json").read_text())
    config["forward_pass"] = {"max_dynamic_batch_size": 2}
    (package / "inference_config.json").write_text(json.dumps(config))
    limited = rfpipe.Detector.load(package, backend="onnx")
    whole = rfpipe.Detector.load(packages["stretch"], backend="onnx")
    batch, _ = whole.preprocess([photos[n] for n in PHOTOS[:3]], implementation="reference")
    for a, b in zip(limited.forward(batch), whole.forward(batch), strict=True):
        assert a.shape[0] == 3 and torch.allclose(a, b, atol=1e-5)


def test_static_network_size_overrides_a_disagreeing_config(packages, tmp_path, caplog):  # noqa: F811
    package = shutil.copytree(packages["stretch"], tmp_path / "mismatch")
    config = json.loads((package / "inference_config.json").read_text())
    config["network_input"]["training_input_size"] = {"width": 256, "height": 256}
    (package / "inference_config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="rfpipe"):
        model = rfpipe.Detector.load(package, backend="onnx")
    assert model.config.training_size == (320, 320)
    assert "using the model's size" in caplog.text


def test_load_errors_name_the_missing_file(packages, tmp_path):  # noqa: F811
    with pytest.raises(rfpipe.ConfigError, match="not found"):
        rfpipe.Detector.load(tmp_path / "nowhere")
    package = shutil.copytree(packages["stretch"], tmp_path / "p", copy_function=shutil.copy)
    with pytest.raises(rfpipe.ConfigError, match=r"engine\.plan, trt_config\.json"):
        rfpipe.Detector.load(package, backend="tensorrt")
    with pytest.raises(ValueError, match="unknown backend"):
        rfpipe.Detector.load(package, backend="openvino")
    (package / "weights.onnx").unlink()
    (package / "weights.pth").unlink()
    with pytest.raises(rfpipe.ConfigError, match="no weights for cpu"):
        rfpipe.Detector.load(package)
    (package / "class_names.txt").unlink()
    with pytest.raises(rfpipe.ConfigError, match="class_names.txt"):
        rfpipe.Detector.load(package)
    with pytest.raises(ValueError, match="torch backend"):
        rfpipe.Detector.load(packages["checkpoint"], backend="onnx")


# --- box mapping through the whole Detector ------------------------------------------------------

# name -> (config kwargs, source size (w, h)); training sizes are (width, height)
MODES = {
    "stretch": (dict(size=(64, 48)), (451, 300)),
    "stretch-static-crop": (dict(size=(64, 48), static_crop=(10, 20, 90, 70)), (640, 427)),
    "letterbox-wide-source": (dict(mode="letterbox", size=(64, 64), dataset=(200, 150)), (640, 300)),
    "letterbox-tall-source": (dict(mode="letterbox", size=(48, 64), dataset=(150, 200)), (300, 640)),
    "letterbox-static-crop": (dict(mode="letterbox", size=(64, 64), dataset=(160, 120), static_crop=(25, 0, 75, 100)), (600, 400)),
    "center-crop-cuts": (dict(mode="center-crop", size=(64, 64), dataset=(200, 150)), (451, 300)),
    "center-crop-pads": (dict(mode="center-crop", size=(64, 64), dataset=(700, 500)), (451, 300)),
    "center-crop-static-crop": (dict(mode="center-crop", size=(64, 64), dataset=(150, 150), static_crop=(10, 10, 90, 90)), (512, 512)),
}


def _forward_map(kwargs: dict, source: tuple[int, int], x: float, y: float) -> tuple[float, float]:
    """Where original pixel position (x, y) lands in the network input, normalised to [0, 1].

    Written from DESIGN.md's rules in float64, independently of rfpipe.geometry.
    """
    w, h = source
    x0 = y0 = 0
    cw, ch = w, h
    if "static_crop" in kwargs:
        xmin, ymin, xmax, ymax = kwargs["static_crop"]
        x0, y0 = int(xmin / 100 * w), int(ymin / 100 * h)
        cw, ch = int(xmax / 100 * w) - x0, int(ymax / 100 * h) - y0
    x, y = x - x0, y - y0
    mode = kwargs.get("mode", "stretch")
    if mode == "stretch":
        return x / cw, y / ch
    dw, dh = kwargs["dataset"]
    if mode == "letterbox":
        s = min(dw / cw, dh / ch)
        left, top = int((dw - int(cw * s)) / 2), int((dh - int(ch * s)) / 2)
        return (x * s + left) / dw, (y * s + top) / dh
    # center-crop: the canvas window starts half the difference in (floor), pads or cuts
    return (x + (dw - cw) // 2 if dw > cw else x - (cw - dw) // 2) / dw, (y + (dh - ch) // 2 if dh > ch else y - (ch - dh) // 2) / dh


@pytest.mark.parametrize("mode", sorted(MODES))
def test_fake_backend_boxes_map_back_to_original_pixels(mode):
    kwargs, source = MODES[mode]
    detector, backend = fake_detector(**kwargs)
    rng = np.random.default_rng(len(mode))
    w, h = source
    # boxes inside the region every mode keeps (the central half, inside any static crop)
    expected = []
    for _ in range(5):
        bx0, by0 = int(rng.integers(w * 0.3, w * 0.45)), int(rng.integers(h * 0.3, h * 0.45))
        expected.append([bx0, by0, bx0 + int(rng.integers(5, w * 0.2)), by0 + int(rng.integers(5, h * 0.2))])
    normalised = []
    for bx0, by0, bx1, by1 in expected:
        (u0, v0), (u1, v1) = _forward_map(kwargs, source, bx0, by0), _forward_map(kwargs, source, bx1, by1)
        normalised.append(((u0 + u1) / 2, (v0 + v1) / 2, u1 - u0, v1 - v0))
    backend.boxes = [normalised]
    image = np.zeros((h, w, 3), np.uint8)
    (dets,) = detector(image, confidence=0.5, implementation="reference")
    assert dets.class_id.tolist() == [0, 1, 0, 1, 0]
    assert np.abs(dets.xyxy - np.array(expected)).max() <= 1, (dets.xyxy.tolist(), expected)


def _measure_rectangle(diff: np.ndarray) -> tuple[float, float, float, float]:
    """Normalised (cx, cy, w, h) of a filtered bright rectangle from its coverage image (values 0..1).

    Resampling filters keep mass and centroid, so the centre row's and column's coverage sums are the
    rectangle's width and height in network pixels, and the centroids its centre.
    """
    height, width = diff.shape
    rows, cols = diff.sum(1), diff.sum(0)
    cy = float((np.arange(height) + 0.5) @ rows / rows.sum())
    cx = float((np.arange(width) + 0.5) @ cols / cols.sum())
    w = float(diff[int(cy)].sum())
    h = float(diff[:, int(cx)].sum())
    return cx / width, cy / height, w / width, h / height


PROPERTY_MODES = {
    "stretch": dict(size=(320, 320)),
    "stretch-static-crop": dict(size=(320, 256), static_crop=(10, 5, 90, 95)),
    "letterbox": dict(mode="letterbox", size=(320, 320), dataset=(800, 600)),
    "letterbox-static-crop": dict(mode="letterbox", size=(320, 320), dataset=(800, 700), static_crop=(20, 0, 80, 100)),
    "center-crop": dict(mode="center-crop", size=(320, 320), dataset=(400, 300)),
}


@pytest.mark.parametrize("photo", ["chelsea", "coffee", "rocket"])
@pytest.mark.parametrize("mode", sorted(PROPERTY_MODES))
def test_bright_rectangle_found_in_network_input_maps_back_within_1px(photos, mode, photo):
    kwargs = PROPERTY_MODES[mode]
    detector, backend = fake_detector(normalization=None, **kwargs)
    base = photos[photo]
    h, w = base.shape[:2]
    rng = np.random.default_rng(abs(hash((mode, photo))) % 2**32)
    # inside the part of the photo every mode keeps
    x0, y0 = int(rng.integers(w * 0.3, w * 0.45)), int(rng.integers(h * 0.3, h * 0.45))
    x1, y1 = x0 + int(rng.integers(w * 0.05, w * 0.2)), y0 + int(rng.integers(h * 0.05, h * 0.2))
    bright, dark = base.copy(), base.copy()
    bright[y0:y1, x0:x1] = 255
    dark[y0:y1, x0:x1] = 0
    # The difference of the two inputs is the filtered rectangle alone (resampling is linear).
    batch, metadata = detector.preprocess([bright, dark], implementation="reference")
    diff = (batch[0, 0] - batch[1, 0]).numpy().astype(np.float64)
    backend.boxes = [[_measure_rectangle(diff)]]
    logits, boxes = detector.forward(batch[:1])
    (dets,) = detector.postprocess(logits, boxes, metadata[:1], confidence=0.5)
    assert np.abs(dets.xyxy[0] - np.array([x0, y0, x1, y1])).max() <= 1, (dets.xyxy[0].tolist(), [x0, y0, x1, y1])
