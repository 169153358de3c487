"""`rfpipe parity`: compare two preprocessing implementations, two backends, or two decoders, over a folder of images.

A side is an implementation ('reference', 'cpu', 'cuda', or 'torchvision': the seed PR's tensor path,
torchvision's antialiased float resize, not exact, kept as a comparator; it has float-tensor
stretch semantics) or a backend ('onnx', 'torch', 'tensorrt'), optionally followed by a decoder:
'+opencv' (the default: rfpipe.io.decode, the reference's own decode) or '+gpu-decode' (what
`rfpipe serve --gpu-decode` does: JPEG decoded by torchvision on the parity device, nvJPEG on
CUDA, torchvision's libjpeg-turbo on the CPU; other formats and declined JPEG by OpenCV on both
sides). `--a cuda --b cuda+gpu-decode` measures what --gpu-decode costs in exactness.
Each side decodes the file's bytes itself. Reported: (0) decoded frames: images decoded by
torchvision, identical frames, share of differing pixel values, max and mean |diff|; (1) network
tensors: bit-identical share, max |diff|, share of differing elements; (2) detections: class-aware
greedy matching at IoU > 0.5: match rate, mean/min IoU, max |confidence delta|, detections that
cross the threshold; (3) COCO mAP@[.5:.95] and mAP@.5 of side B, against given COCO annotations
or, without them, against side A's detections as pseudo ground truth.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rfpipe.backends import BACKENDS
from rfpipe.detections import Detections
from rfpipe.detector import Detector
from rfpipe.tools.predict import read_image
from rfpipe.preprocess import IMPLEMENTATIONS

IMPLEMENTATION_SIDES = (*IMPLEMENTATIONS, "torchvision")
DECODERS = ("opencv", "gpu-decode")
MATCH_IOU = 0.5


@dataclass
class Side:
    name: str
    detector: Detector
    implementation: str  # an rfpipe implementation, or "torchvision"
    decoder: str = "opencv"  # one of DECODERS

    def read(self, path: Path) -> np.ndarray | torch.Tensor:
        """The frame of an image file, decoded by this side's decoder."""
        return read_image(path, self.detector.device if self.decoder == "gpu-decode" else None)

    def preprocess(self, image: np.ndarray | torch.Tensor):
        if self.implementation == "torchvision":
            # The seed PR's path: uint8 frame -> float CHW on the device -> antialiased tensor resize.
            tensor = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(image))
            tensor = tensor.to(self.detector.device).permute(2, 0, 1).float().div(255)
            return self.detector.preprocess(tensor, implementation="reference")
        return self.detector.preprocess(image, implementation=self.implementation)


def _split_spec(spec: str) -> tuple[str, str]:
    """'cuda+gpu-decode' -> ('cuda', 'gpu-decode'); no decoder means 'opencv'."""
    base, _, decoder = spec.partition("+")
    if base not in IMPLEMENTATION_SIDES and base not in BACKENDS:
        raise ValueError(f"unknown side {spec!r} (implementations: {list(IMPLEMENTATION_SIDES)}, "
                         f"backends: {list(BACKENDS)}, each optionally +decoder: {list(DECODERS)})")
    if decoder and decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r} in side {spec!r} (decoders: {list(DECODERS)})")
    return base, decoder or "opencv"


def make_sides(model: str | Path, a: str, b: str, device: str, backend: str, implementation: str,
               **options) -> tuple[Side, Side]:
    """Two sides from names ('cuda', 'onnx', 'cuda+gpu-decode', ...); detectors are shared where both sides use the same backend."""
    specs = [_split_spec(spec) for spec in (a, b)]
    loaded: dict[str, Detector] = {}

    def detector(backend_name: str) -> Detector:
        if backend_name not in loaded:
            loaded[backend_name] = Detector.load(model, device=device, backend=backend_name, **options)
        return loaded[backend_name]

    def side(spec: str, base: str, decoder: str) -> Side:
        if base in BACKENDS:
            return Side(spec, detector(base), implementation, decoder)
        return Side(spec, detector(backend), base, decoder)

    return side(a, *specs[0]), side(b, *specs[1])


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes [N, 4] x [M, 4] (pixel boxes, end-exclusive)."""
    a, b = a.astype(np.float64)[:, None], b.astype(np.float64)[None]
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    union = area(a) + area(b) - inter
    # Two empty boxes overlap fully only where they are the same box.
    return np.where(union > 0, inter / np.where(union > 0, union, 1), np.all(a == b, axis=-1))


def greedy_match(a: Detections, b: Detections) -> list[tuple[int, int, float]]:
    """Class-aware greedy matching in A's (descending confidence) order: (i, j, IoU) with IoU > 0.5."""
    if len(a) == 0 or len(b) == 0:
        return []
    ious = iou_matrix(a.xyxy, b.xyxy)
    ious[a.class_id[:, None] != b.class_id[None]] = -1
    taken = np.zeros(len(b), bool)
    pairs = []
    for i in range(len(a)):
        row = np.where(taken, -1, ious[i])
        j = int(row.argmax())
        if row[j] > MATCH_IOU:
            taken[j] = True
            pairs.append((i, j, float(row[j])))
    return pairs


def compare_detections(a: Detections, b: Detections, a_all: Detections, b_all: Detections) -> dict[str, Any]:
    """Matching statistics of one image; `*_all` are the same side's detections with no threshold."""
    pairs = greedy_match(a, b)
    matched_a = {i for i, _, _ in pairs}
    matched_b = {j for _, j, _ in pairs}
    # A detection without a partner crossed the threshold if the other side has it below the threshold.
    crossed = 0
    for dets, matched, other_all in ((a, matched_a, b_all), (b, matched_b, a_all)):
        rest = [k for k in range(len(dets)) if k not in matched]
        if rest:
            subset = Detections(dets.xyxy[rest], dets.confidence[rest], dets.class_id[rest], [dets.class_name[k] for k in rest])
            crossed += len(greedy_match(subset, other_all))
    return {
        "a": len(a), "b": len(b), "matched": len(pairs), "crossed": crossed,
        "ious": [iou for _, _, iou in pairs],
        "confidence_deltas": [abs(float(a.confidence[i]) - float(b.confidence[j])) for i, j, _ in pairs],
    }


def coco_map(ground_truth: list[tuple[int, int, np.ndarray, np.ndarray]], predictions: list[dict],
             categories: list[int]) -> dict[str, float | None]:
    """mAP@[.5:.95] and mAP@.5 with pycocotools; `ground_truth` rows: (image_id, w*h, boxes xyxy, class ids)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations = [], []
    for image_id, (width, height), boxes, classes in ground_truth:
        images.append({"id": image_id, "width": width, "height": height})
        for box, cls in zip(boxes.tolist(), classes.tolist(), strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(cls),
                                "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0})
    if not annotations:
        return {"map_50_95": None, "map_50": None}
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations, "categories": [{"id": c} for c in categories]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(predictions) if predictions else COCO()
        if not predictions:
            return {"map_50_95": 0.0, "map_50": 0.0}
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {"map_50_95": float(evaluator.stats[0]), "map_50": float(evaluator.stats[1])}


def load_coco_annotations(path: Path, class_names: tuple[str, ...]) -> tuple[dict[str, tuple], dict[int, int]]:
    """file name -> (image id, boxes xyxy, our class ids); categories matched to class names by name."""
    data = json.loads(Path(path).read_text())
    by_name = {name: i for i, name in enumerate(class_names)}
    category_to_class = {c["id"]: by_name[c["name"]] for c in data.get("categories", []) if c["name"] in by_name}
    boxes: dict[int, list] = {}
    for ann in data.get("annotations", []):
        if ann.get("category_id") in category_to_class:
            x, y, w, h = ann["bbox"]
            boxes.setdefault(ann["image_id"], []).append(([x, y, x + w, y + h], category_to_class[ann["category_id"]]))
    files = {}
    for image in data.get("images", []):
        rows = boxes.get(image["id"], [])
        files[Path(image["file_name"]).name] = (
            image["id"], np.array([r[0] for r in rows], np.float64).reshape(-1, 4), np.array([r[1] for r in rows], np.int64),
        )
    return files, category_to_class


class FrameDrift:
    """Pixel differences of the two sides' decoded frames, summed over images."""

    def __init__(self, side_a: Side, side_b: Side):
        self.decoders = [side_a.decoder, side_b.decoder]
        self.device = str(side_b.detector.device)
        self.images = self.identical = self.values = self.differing = self.shape_mismatch = 0
        self.max_abs_diff = self.abs_diff_sum = 0
        self.on_device = [0, 0]  # images each side decoded with torchvision

    def add(self, frame_a: np.ndarray | torch.Tensor, frame_b: np.ndarray | torch.Tensor) -> dict[str, Any]:
        """Count one image's frames; returns its own numbers (for the per-image rows)."""
        self.images += 1
        frames = []
        for i, frame in enumerate((frame_a, frame_b)):
            if isinstance(frame, torch.Tensor):
                self.on_device[i] += 1
                frame = frame.cpu().numpy()
            frames.append(frame)
        if frames[0].shape != frames[1].shape:
            self.shape_mismatch += 1
            return {"frame_shape_mismatch": True}
        diff = np.abs(frames[0].astype(np.int16) - frames[1].astype(np.int16))
        differing, largest = int(np.count_nonzero(diff)), int(diff.max())
        self.identical += differing == 0
        self.values += diff.size
        self.differing += differing
        self.max_abs_diff = max(self.max_abs_diff, largest)
        self.abs_diff_sum += int(diff.sum(dtype=np.int64))
        return {"frame_differing_values": differing, "frame_max_abs_diff": largest}

    def report(self) -> dict[str, Any]:
        return {"decoders": self.decoders, "device": self.device, "images": self.images,
                "decoded_by_torchvision": self.on_device, "identical": self.identical, "values": self.values,
                "differing": self.differing, "differing_share": self.differing / max(1, self.values),
                "max_abs_diff": self.max_abs_diff, "mean_abs_diff": self.abs_diff_sum / max(1, self.values),
                "shape_mismatch": self.shape_mismatch}


def run_parity(side_a: Side, side_b: Side, images: list[Path], confidence: float = 0.4,
               annotations: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """The comparisons over `images`; returns the report dict (printed by `format_report`)."""
    from tqdm import tqdm

    gt_files = None
    if annotations is not None:
        gt_files, _ = load_coco_annotations(annotations, side_a.detector.class_names)
    frames = FrameDrift(side_a, side_b)
    tensors = {"batches": 0, "identical": 0, "elements": 0, "differing": 0, "max_abs_diff": 0.0, "shape_mismatch": 0}
    per_image, ground_truth, predictions = [], [], []
    for image_id, path in enumerate(tqdm(images, desc="parity", unit="image", disable=not progress), start=1):
        first = side_a.read(path)
        decoded = [first, first if side_b.decoder == side_a.decoder else side_b.read(path)]  # same decoder, same frame
        frame_stats = frames.add(*decoded)
        frame = decoded[0]
        results = []
        for side, image in zip((side_a, side_b), decoded, strict=True):
            batch, meta = side.preprocess(image)
            logits, boxes = side.detector.forward(batch)
            results.append((batch.cpu(), side.detector.postprocess(logits, boxes, meta, confidence=confidence)[0],
                            side.detector.postprocess(logits, boxes, meta, confidence=0.0)[0]))
        (ta, da, da_all), (tb, db, db_all) = results
        tensors["batches"] += 1
        if ta.shape != tb.shape:
            tensors["shape_mismatch"] += 1
        else:
            differing = int((ta != tb).sum())
            tensors["identical"] += differing == 0
            tensors["elements"] += ta.numel()
            tensors["differing"] += differing
            tensors["max_abs_diff"] = max(tensors["max_abs_diff"], float((ta - tb).abs().max()))
        stats = compare_detections(da, db, da_all, db_all)
        per_image.append({"image": path.name, **frame_stats, **stats})
        if gt_files is not None:
            if path.name not in gt_files:
                continue
            gid, gboxes, gclasses = gt_files[path.name]
            ground_truth.append((gid, (frame.shape[1], frame.shape[0]), gboxes, gclasses + 1))
        else:
            gid = image_id
            ground_truth.append((gid, (frame.shape[1], frame.shape[0]), da.xyxy, da.class_id.astype(np.int64) + 1))
        for box, cls, score in zip(db_all.xyxy.tolist(), db_all.class_id.tolist(), db_all.confidence.tolist(), strict=True):
            predictions.append({"image_id": gid, "category_id": cls + 1, "score": score,
                                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})

    ious = [v for r in per_image for v in r["ious"]]
    deltas = [v for r in per_image for v in r["confidence_deltas"]]
    total_a, total_b = sum(r["a"] for r in per_image), sum(r["b"] for r in per_image)
    matched = sum(r["matched"] for r in per_image)
    detections = {
        "a": total_a, "b": total_b, "matched": matched,
        "match_rate": 2 * matched / (total_a + total_b) if total_a + total_b else 1.0,
        "mean_iou": float(np.mean(ious)) if ious else None, "min_iou": float(np.min(ious)) if ious else None,
        "max_confidence_delta": float(np.max(deltas)) if deltas else 0.0,
        "crossed_threshold": sum(r["crossed"] for r in per_image),
    }
    categories = list(range(1, len(side_a.detector.class_names) + 1))
    mean_ap = coco_map(ground_truth, predictions, categories)
    tensors["identical_share"] = tensors["identical"] / max(1, tensors["batches"])
    tensors["differing_share"] = tensors["differing"] / max(1, tensors["elements"])
    return {
        "a": side_a.name, "b": side_b.name, "images": len(images), "confidence": confidence,
        "ground_truth": str(annotations) if annotations else f"side A ({side_a.name}) detections",
        "frames": frames.report(), "tensors": tensors, "detections": detections, "map": mean_ap, "per_image": per_image,
    }


def _decoded_by(f: dict[str, Any], side: int) -> str:
    if f["decoders"][side] == "opencv":
        return "OpenCV"
    return (f"torchvision on {f['device']} {f['decoded_by_torchvision'][side]}/{f['images']}, "
            "the rest (not JPEG, or declined) OpenCV")


def format_report(report: dict[str, Any]) -> str:
    f, t, d, m = report["frames"], report["tensors"], report["detections"], report["map"]

    def num(v, fmt=".4f"):
        return "n/a" if v is None else format(v, fmt)

    return "\n".join([
        f"parity: A={report['a']}  B={report['b']}  images={report['images']}  confidence>{report['confidence']}",
        f"  frames      decoded by A: {_decoded_by(f, 0)}; B: {_decoded_by(f, 1)}",
        f"              identical {f['identical']}/{f['images']}  differing values {f['differing_share']:.4%}  "
        f"max|diff| {f['max_abs_diff']}  mean|diff| {f['mean_abs_diff']:.4g}"
        + (f"  shape mismatches {f['shape_mismatch']}" if f["shape_mismatch"] else ""),
        f"  tensors     bit-identical {t['identical']}/{t['batches']}  max|diff| {t['max_abs_diff']:.6g}  "
        f"differing elements {t['differing_share']:.4%}" + (f"  shape mismatches {t['shape_mismatch']}" if t["shape_mismatch"] else ""),
        f"  detections  A {d['a']}  B {d['b']}  matched {d['matched']}  match rate {d['match_rate']:.4f}  "
        f"IoU mean {num(d['mean_iou'])} min {num(d['min_iou'])}  max|conf delta| {d['max_confidence_delta']:.6g}  "
        f"crossed threshold {d['crossed_threshold']}",
        f"  COCO mAP of B vs {report['ground_truth']}: mAP@[.5:.95] {num(m['map_50_95'])}  mAP@.5 {num(m['map_50'])}",
    ])


def plot(report: dict[str, Any], path: Path) -> None:
    """Histogram of matched IoUs and per-image detection counts for both sides."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    ious = [v for r in report["per_image"] for v in r["ious"]]
    left.hist(ious or [1.0], bins=40, range=(0.5, 1.0))
    left.set_title(f"matched IoU ({report['a']} vs {report['b']})", fontsize=9)
    x = np.arange(len(report["per_image"]))
    right.bar(x - 0.2, [r["a"] for r in report["per_image"]], 0.4, label=report["a"])
    right.bar(x + 0.2, [r["b"] for r in report["per_image"]], 0.4, label=report["b"])
    right.set_title("detections per image", fontsize=9)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
