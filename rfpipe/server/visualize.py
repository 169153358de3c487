"""`visualize_predictions`: the image with its boxes drawn, as base64 JPEG (what the inference server returns)."""

from __future__ import annotations

import base64

import cv2
import numpy as np

# BGR colours cycled by class id, so one class keeps one colour across images.
_PALETTE = ((56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72),
            (23, 204, 146), (134, 219, 61), (211, 188, 0), (209, 85, 0), (255, 115, 100), (255, 56, 132))


def draw_predictions(frame: np.ndarray, predictions: list[dict], labels: bool = True, stroke: int = 2) -> str:
    """Base64 JPEG of `frame` (BGR) with each prediction's box (and class label) drawn.

    >>> draw_predictions(frame, [{"x": 50, "y": 40, "width": 20, "height": 10, "class": "cat", "class_id": 0,
    ...                          "confidence": 0.9}])  # doctest: +SKIP
    '/9j/4AAQ...'
    """
    canvas = np.ascontiguousarray(frame).copy()
    for p in predictions:
        colour = _PALETTE[int(p["class_id"]) % len(_PALETTE)]
        x0, y0 = round(p["x"] - p["width"] / 2), round(p["y"] - p["height"] / 2)
        x1, y1 = round(p["x"] + p["width"] / 2), round(p["y"] + p["height"] / 2)
        cv2.rectangle(canvas, (x0, y0), (x1, y1), colour, stroke)
        if labels:
            text = f"{p['class']} {p['confidence']:.2f}"
            cv2.putText(canvas, text, (x0, max(y0 - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
    ok, encoded = cv2.imencode(".jpg", canvas)
    if not ok:
        raise RuntimeError("JPEG encoding of the visualization failed")
    return base64.b64encode(encoded.tobytes()).decode("ascii")
