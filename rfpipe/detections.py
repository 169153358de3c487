"""`Detections`: one image's boxes, scores and classes on the CPU, with conversions named after their target.

Plain numpy fields, like supervision's `Detections`, so results are cheap to pass around, serialise
and compare; the fields are checked when a `Detections` is made. `to_supervision()` /
`from_supervision()` convert for annotators, `to_inference_json()` for clients of the Roboflow
inference server.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import supervision


def _uuid4_strings(count: int) -> list[str]:
    """`count` random version-4 UUIDs as `str(uuid.uuid4())` writes them, from one `os.urandom` call.

    `uuid.uuid4()` reads the OS's random source and builds a UUID object per id (~2 us each, under the
    GIL, on the server's event loop); one read and one hex string for all ids cost a quarter of that.

    >>> import uuid
    >>> [uuid.UUID(u).version for u in _uuid4_strings(2)], len(_uuid4_strings(3)[0])
    ([4, 4], 36)
    """
    if count == 0:
        return []
    raw = bytearray(os.urandom(16 * count))
    raw[6::16] = bytes(b & 0x0F | 0x40 for b in raw[6::16])  # version 4
    raw[8::16] = bytes(b & 0x3F | 0x80 for b in raw[8::16])  # variant RFC 4122
    h = raw.hex()
    return [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-{h[i + 12:i + 16]}-{h[i + 16:i + 20]}-{h[i + 20:i + 32]}"
            for i in range(0, 32 * count, 32)]


def _array(value: Any, name: str, kind: str, dtype: type, shape: str) -> np.ndarray:
    array = np.asarray(value)
    wanted = {"i": "integers", "f": "floats"}[kind]
    if array.dtype.kind not in (("i", "u") if kind == "i" else ("f",)):
        raise ValueError(f"Detections.{name}: expected {wanted} ({shape}), got dtype {array.dtype}")
    return array.astype(dtype, copy=False)


@dataclass(eq=False)
class Detections:
    """Detections of one image, boxes in original-image pixels.

    Behaves like a sequence of detections: `len`, iteration (one `(xyxy, confidence, class_id,
    class_name)` tuple each), and indexing by an int, a slice, integer indices or a boolean mask
    (each returns `Detections`). Equal when every field is equal.

    >>> d = Detections(np.array([[10, 20, 30, 60], [0, 0, 5, 5]]), np.array([0.9, 0.3]), np.array([2, 0]),
    ...                ["cat", "dog"])
    >>> len(d), d[d.confidence > 0.5].class_name, d[1:] == d[[1]]
    (2, ['cat'], True)
    >>> Detections.empty() == Detections.empty()
    True
    """

    xyxy: np.ndarray  # int32 [N, 4]: x_min, y_min, x_max, y_max
    confidence: np.ndarray  # float32 [N], descending
    class_id: np.ndarray  # int32 [N]
    class_name: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.xyxy = _array(self.xyxy, "xyxy", "i", np.int32, "[N, 4] pixel coordinates")
        if self.xyxy.ndim != 2 or self.xyxy.shape[1] != 4:
            raise ValueError(f"Detections.xyxy: expected shape [N, 4], got {list(self.xyxy.shape)}")
        n = self.xyxy.shape[0]
        self.confidence = _array(self.confidence, "confidence", "f", np.float32, "[N] scores")
        self.class_id = _array(self.class_id, "class_id", "i", np.int32, "[N] class indices")
        for name in ("confidence", "class_id"):
            shape = list(getattr(self, name).shape)
            if shape != [n]:
                raise ValueError(f"Detections.{name}: expected shape [{n}] (one per box), got {shape}")
        if isinstance(self.class_name, (str, bytes)) or not isinstance(self.class_name, Sequence):
            raise ValueError(f"Detections.class_name: expected a list of {n} strings, got {type(self.class_name).__name__}")
        self.class_name = list(self.class_name)
        if len(self.class_name) != n or not all(isinstance(c, str) for c in self.class_name):
            raise ValueError(f"Detections.class_name: expected {n} strings (one per box), got {self.class_name!r}")

    @classmethod
    def empty(cls) -> Detections:
        """No detections."""
        return cls(np.zeros((0, 4), np.int32), np.zeros(0, np.float32), np.zeros(0, np.int32), [])

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Detections):
            return NotImplemented
        return (
            np.array_equal(self.xyxy, other.xyxy)
            and np.array_equal(self.confidence, other.confidence)
            and np.array_equal(self.class_id, other.class_id)
            and self.class_name == other.class_name
        )

    __hash__ = None  # mutable fields: not hashable, like a list

    def __iter__(self) -> Iterator[tuple[np.ndarray, float, int, str]]:
        for i in range(len(self)):
            yield self.xyxy[i], float(self.confidence[i]), int(self.class_id[i]), self.class_name[i]

    def __getitem__(self, index: int | slice | Sequence[int] | np.ndarray) -> Detections:
        if isinstance(index, (int, np.integer)):
            if not -len(self) <= index < len(self):
                raise IndexError(f"detection {index} out of range ({len(self)} detections)")
            index = [int(index)]
        if isinstance(index, slice):
            rows = np.arange(len(self))[index]
        else:
            rows = np.asarray(index)
            if rows.dtype == bool:
                if rows.shape != (len(self),):
                    raise IndexError(f"boolean mask of shape {list(rows.shape)} for {len(self)} detections")
                rows = np.flatnonzero(rows)
            elif rows.size == 0:
                rows = rows.astype(np.intp)
            elif rows.dtype.kind not in "iu" or rows.ndim != 1:
                raise IndexError(f"index detections with an int, a slice, integer indices or a boolean mask, got {index!r}")
        return Detections(self.xyxy[rows], self.confidence[rows], self.class_id[rows],
                          [self.class_name[i] for i in rows.tolist()])

    def to_supervision(self) -> supervision.Detections:
        """A `supervision.Detections` (float boxes; class names in `data["class_name"]`), for annotators.

        >>> import supervision as sv
        >>> dets = Detections(np.array([[2, 2, 20, 12]]), np.array([0.9]), np.array([0]), ["cat"])
        >>> annotated = sv.BoxAnnotator().annotate(np.zeros((32, 32, 3), np.uint8), dets.to_supervision())
        >>> int(annotated.max()) > 0, dets.to_supervision().data["class_name"].tolist()
        (True, ['cat'])
        """
        import supervision as sv

        return sv.Detections(
            xyxy=self.xyxy.astype(np.float32).reshape(-1, 4),
            confidence=self.confidence.astype(np.float32),
            class_id=self.class_id.astype(np.int64),
            data={"class_name": np.array(self.class_name, dtype=object).reshape(-1)},
        )

    @classmethod
    def from_supervision(cls, detections: supervision.Detections, *,
                         class_names: Sequence[str] | None = None) -> Detections:
        """From a `supervision.Detections`: boxes rounded to whole pixels, names from
        `data["class_name"]` or else `class_names[class_id]`.

        >>> import supervision as sv
        >>> Detections.from_supervision(sv.Detections(np.array([[1.4, 2.6, 9.5, 8.0]]), confidence=np.array([0.8]),
        ...                                           class_id=np.array([1])), class_names=["cat", "dog"]).class_name
        ['dog']
        """
        if detections.confidence is None or detections.class_id is None:
            raise ValueError("from_supervision: the supervision Detections needs confidence and class_id")
        class_id = np.asarray(detections.class_id)
        names = detections.data.get("class_name") if detections.data else None
        if names is not None:
            names = [str(n) for n in np.asarray(names).reshape(-1).tolist()]
        elif class_names is not None:
            if class_id.size and (class_id.min() < 0 or class_id.max() >= len(class_names)):
                raise ValueError(f"from_supervision: class_id outside the {len(class_names)} class_names")
            names = [class_names[i] for i in class_id.tolist()]
        else:
            raise ValueError("from_supervision: no data['class_name'] in the detections; pass class_names")
        xyxy = np.rint(np.asarray(detections.xyxy, dtype=np.float64)).astype(np.int32).reshape(-1, 4)
        return cls(xyxy, np.asarray(detections.confidence, dtype=np.float32), class_id, names)

    def to_inference_json(self) -> list[dict[str, Any]]:
        """The inference server's prediction objects: centre x/y, width, height, confidence, class, ids.

        >>> Detections(np.array([[10, 20, 30, 60]]), np.array([0.9], np.float32), np.array([0]),
        ...            ["cat"]).to_inference_json()[0]["x"]
        20.0
        """
        predictions = []
        for (x0, y0, x1, y1), score, class_id, name, detection_id in zip(
            self.xyxy.tolist(), self.confidence.tolist(), self.class_id.tolist(), self.class_name,
            _uuid4_strings(len(self.class_name)), strict=True
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
                    "detection_id": detection_id,
                }
            )
        return predictions
