"""`Detections`: one image's boxes, scores and classes on the CPU, with conversions named after their target.

Plain numpy fields, like supervision's `Detections`, so results are cheap to pass around, serialise
and compare; `to_supervision()` and `to_inference_json()` convert for annotators and for clients
of the Roboflow inference server.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import supervision


@dataclass
class Detections:
    """Detections of one image, boxes in original-image pixels.

    >>> d = Detections.empty()
    >>> len(d), d.xyxy.shape
    (0, (0, 4))
    """

    xyxy: np.ndarray  # int32 [N, 4]: x_min, y_min, x_max, y_max
    confidence: np.ndarray  # float32 [N], descending
    class_id: np.ndarray  # int32 [N]
    class_name: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.int32), np.zeros(0, np.float32), np.zeros(0, np.int32), [])

    def to_supervision(self) -> supervision.Detections:
        """A `supervision.Detections` (float boxes; class names in `data["class_name"]`), for annotators.

        >>> annotated = sv.BoxAnnotator().annotate(frame.copy(), dets.to_supervision())  # doctest: +SKIP
        """
        import supervision as sv

        return sv.Detections(
            xyxy=self.xyxy.astype(np.float32).reshape(-1, 4),
            confidence=self.confidence.astype(np.float32),
            class_id=self.class_id.astype(np.int64),
            data={"class_name": np.array(self.class_name, dtype=object).reshape(-1)},
        )

    def to_inference_json(self) -> list[dict[str, Any]]:
        """The inference server's prediction objects: centre x/y, width, height, confidence, class, ids.

        >>> Detections(np.array([[10, 20, 30, 60]]), np.array([0.9], np.float32), np.array([0]),
        ...            ["cat"]).to_inference_json()[0]["x"]
        20.0
        """
        predictions = []
        for (x0, y0, x1, y1), score, class_id, name in zip(
            self.xyxy.tolist(), self.confidence.tolist(), self.class_id.tolist(), self.class_name, strict=True
        ):
            predictions.append(
                {
                    "x": (x0 + x1) / 2,
                    "y": (y0 + y1) / 2,
                    "width": float(x1 - x0),
                    "height": float(y1 - y0),
                    "confidence": score,
                    "class": name,
                    "class_id": class_id,
                    "detection_id": str(uuid.uuid4()),
                }
            )
        return predictions
