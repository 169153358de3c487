"""RF-DETR post-processing: (logits, boxes) on the device -> `Detections` in original-image pixels.

The semantics are the reference's (DESIGN.md), op for op in float32 so the integer boxes, class
ids and confidences equal inference-models 0.39.x bit for bit: sigmoid over the whole batch;
top-k over queries x classes with k = queries; class removal/remapping; confidence strictly above
the threshold; cxcywh -> xyxy; scale by the (intermediate or inference) size; remove pads; divide
by the scales; add the static-crop offset; clamp; round half to even.

All fixed-shape work runs batched on the tensors' device; one copy brings [B, Q] rows to the CPU,
where the variable-length selection and the final sort (the same `torch.sort` the reference
calls, needed only where scores tie: top-k's rows are already in descending order) happen in numpy.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from rfpipe.config import ModelConfig
from rfpipe.detections import Detections
from rfpipe.geometry import PreprocessMetadata

DEFAULT_CONFIDENCE = 0.4

# A scalar threshold, one per output class (by class id), or class name -> threshold (others default).
Confidence = float | Sequence[float] | Mapping[str, float]


def class_layout(config: ModelConfig) -> tuple[tuple[str, ...], list[int]]:
    """Output class names, and for each named logit column its output class id (-1: dropped).

    Removed classes (`class_names_operations`) are dropped and the remaining ids close up, as the
    reference's remapping does; columns past the names (the no-object column) are dropped too.

    >>> config = ModelConfig.from_dict({"network_input": {"training_input_size": {"width": 64, "height": 64}},
    ...     "class_names_operations": [{"type": "class_name_removal", "class_name": "b"}]},
    ...     class_names=["a", "b", "c"])
    >>> class_layout(config)
    (('a', 'c'), [0, -1, 1])
    """
    if not config.class_names:
        raise ValueError(
            f"{config.source}: the model has no class names (class_names.txt); "
            "post-processing needs them to know which logit columns are classes"
        )
    removed = set(config.removed_class_names)
    names: list[str] = []
    mapping: list[int] = []
    for name in config.class_names:
        if name in removed:
            mapping.append(-1)
        else:
            mapping.append(len(names))
            names.append(name)
    return tuple(names), mapping


def _thresholds(confidence: Confidence, names: Sequence[str]) -> float | list[float]:
    """A float, or one float per output class; clear errors for anything else."""
    def check(value: object, what: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
            raise TypeError(f"{what} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{what} must be finite, got {value!r}")
        return float(value)

    if isinstance(confidence, Mapping):
        unknown = sorted(set(confidence) - set(names))
        if unknown:
            raise ValueError(f"confidence names unknown classes {unknown} (the model's classes: {list(names)})")
        return [check(confidence.get(n, DEFAULT_CONFIDENCE), f"confidence[{n!r}]") for n in names]
    if isinstance(confidence, (Sequence, np.ndarray, torch.Tensor)) and not isinstance(confidence, str):
        values = list(confidence.tolist() if hasattr(confidence, "tolist") else confidence)
        if len(values) != len(names):
            raise ValueError(
                f"per-class confidence needs one value per class ({len(names)}: {list(names)}), got {len(values)}"
            )
        return [check(v, f"confidence[{i}]") for i, v in enumerate(values)]
    return check(confidence, "confidence")


@functools.lru_cache(maxsize=64)
def _class_table(mapping: tuple[int, ...], columns: int, device: torch.device) -> torch.Tensor:
    """Logit column -> output class id (-1: dropped; so are columns beyond the names, the no-object
    column), on `device`: built and uploaded once per layout, read-only afterwards."""
    table = torch.full((max(columns, len(mapping)),), -1, dtype=torch.int64)
    table[: len(mapping)] = torch.tensor(mapping, dtype=torch.int64)
    return table.to(device)


def _per_image_rows(metadata: Sequence[PreprocessMetadata], device: torch.device) -> tuple[torch.Tensor, ...]:
    """[B, 1, 4] float32 tensors: denormalisation size, pads, scales, crop offsets, clamp maxima."""
    size, pads, scales, offsets, maxima = [], [], [], [], []
    for m in metadata:
        denorm = m.nonsquare_intermediate_size or m.inference_size
        size.append([denorm.width, denorm.height] * 2)
        pads.append([m.pad_left, m.pad_top] * 2)
        scales.append([m.scale_width, m.scale_height] * 2)  # Python doubles rounded to float32, as the reference
        offsets.append([m.static_crop_offset.offset_x, m.static_crop_offset.offset_y] * 2)
        maxima.append([m.original_size.width, m.original_size.height] * 2)
    rows = torch.tensor([size, pads, scales, offsets, maxima], dtype=torch.float32)
    rows = rows.to(device, non_blocking=True).unsqueeze(2)  # [5, B, 1, 4]
    return tuple(rows.unbind(0))


def _to_host(scores: torch.Tensor, class_id: torch.Tensor, xyxy: torch.Tensor,
             keep: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The fixed-shape rows on the CPU in one device -> host copy (one wait for the GPU, not four).

    The float32 scores travel as their int32 bit patterns beside the int32 boxes, class ids and
    keep flags, so every value arrives bit for bit. On the CPU (or with other score dtypes) the
    tensors are returned as they are.
    """
    if scores.device.type == "cpu" or scores.dtype != torch.float32:
        return tuple(t.cpu() for t in (scores, class_id, xyxy, keep))
    return _copy_packed(scores, class_id, xyxy, keep)


def _copy_packed(scores: torch.Tensor, class_id: torch.Tensor, xyxy: torch.Tensor,
                 keep: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`_to_host`'s one copy: [B, Q] float32 scores, int64 class ids, bool keep and [B, Q, 4] int32 boxes."""
    packed = torch.cat([scores.view(torch.int32).unsqueeze(-1), class_id.to(torch.int32).unsqueeze(-1),
                        xyxy, keep.to(torch.int32).unsqueeze(-1)], dim=-1).cpu()  # [B, Q, 7]
    return (packed[..., 0].contiguous().view(torch.float32), packed[..., 1].to(torch.int64),
            packed[..., 2:6], packed[..., 6].bool())


def postprocess(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    metadata: Sequence[PreprocessMetadata],
    config: ModelConfig,
    *,
    confidence: Confidence = DEFAULT_CONFIDENCE,
) -> list[Detections]:
    """Detections for each image from the network's outputs and the preprocessing metadata.

    `logits` [B, Q, C] and `boxes` [B, Q, 4] (normalised cxcywh) on any device; `confidence` is a
    float, one value per class id, or a dict of class name -> threshold (others use 0.4).

    >>> batch, meta = rfpipe.preprocess(frame, config)  # model  # doctest: +SKIP
    >>> logits, boxes = backend(batch)  # model  # doctest: +SKIP
    >>> rfpipe.postprocess(logits, boxes, meta, config, confidence=0.5)[0].xyxy  # model  # doctest: +SKIP
    """
    if logits.dim() != 3 or boxes.dim() != 3 or boxes.shape[-1] != 4 or logits.shape[:2] != boxes.shape[:2]:
        raise ValueError(
            f"expected logits [B, Q, C] and boxes [B, Q, 4] with the same B and Q, "
            f"got {tuple(logits.shape)} and {tuple(boxes.shape)}"
        )
    if len(metadata) != logits.shape[0]:
        raise ValueError(f"{len(metadata)} metadata entries for a batch of {logits.shape[0]}")
    names, mapping = class_layout(config)
    thresholds = _thresholds(confidence, names)
    batch, queries, columns = logits.shape
    device = logits.device
    if batch == 0:
        return []

    table = _class_table(tuple(mapping), columns, device)

    # Sigmoid over the whole batch at once, as the reference does: vectorised and scalar tails of
    # CPU kernels may round differently, so the element layout must be the same.
    probabilities = torch.sigmoid(logits)
    scores, flat_index = probabilities.reshape(batch, queries * columns).topk(queries, dim=1)
    query = torch.div(flat_index, columns, rounding_mode="floor")
    class_id = table[flat_index % columns]
    keep = class_id >= 0
    if isinstance(thresholds, list):
        per_class = torch.tensor(thresholds, dtype=torch.float32).to(device=device, dtype=probabilities.dtype)
        keep &= scores > per_class[class_id.clamp(min=0)]
    else:
        keep &= scores > thresholds

    picked = boxes.gather(1, query.unsqueeze(-1).expand(batch, queries, 4))
    centre, extent = picked[..., :2], picked[..., 2:]
    xyxy = torch.cat([centre - 0.5 * extent, centre + 0.5 * extent], dim=-1)
    size, pads, scales, offsets, maxima = _per_image_rows(metadata, device)
    xyxy = xyxy * size
    xyxy = (xyxy - pads) / scales + offsets
    xyxy = torch.minimum(torch.maximum(xyxy, torch.zeros_like(maxima)), maxima)
    xyxy = xyxy.round().to(torch.int32)

    scores, class_id, xyxy, keep = (t.numpy() for t in _to_host(scores, class_id, xyxy, keep))
    results = []
    for i in range(batch):
        rows = np.flatnonzero(keep[i])
        kept = scores[i, rows]
        # top-k has already sorted each row in descending order, so the reference's final sort keeps
        # every strictly decreasing row as it is; only ties (or NaN) go through the same torch.sort.
        if kept.size > 1 and not (kept[1:] < kept[:-1]).all():
            rows = rows[torch.sort(torch.from_numpy(kept), descending=True).indices.numpy()]
        ids = class_id[i, rows].astype(np.int32)
        results.append(
            Detections(
                xyxy=xyxy[i, rows],
                confidence=scores[i, rows],
                class_id=ids,
                class_name=[names[c] for c in ids.tolist()],
            )
        )
    return results
