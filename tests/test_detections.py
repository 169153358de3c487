"""`Detections`: fields checked on construction, equality on arrays, sequence behaviour, conversions."""

from __future__ import annotations

import numpy as np
import pytest

from rfpipe import Detections


def _three() -> Detections:
    return Detections(np.array([[0, 0, 10, 10], [5, 5, 20, 30], [1, 2, 3, 4]], np.int32),
                      np.array([0.9, 0.5, 0.2], np.float32), np.array([0, 1, 0], np.int32), ["a", "b", "a"])


def test_empty_detections_equal_each_other():
    assert Detections.empty() == Detections.empty()
    assert _three() == _three()
    assert _three() != Detections.empty()
    other = _three()
    other.confidence[1] = 0.6
    assert _three() != other


@pytest.mark.parametrize("fields, message", [
    (dict(xyxy=np.zeros((2, 3), np.int32)), r"xyxy: expected shape \[N, 4\]"),
    (dict(xyxy=np.zeros((2, 4), np.float32)), "xyxy: expected integers"),
    (dict(confidence=np.zeros(3, np.float32)), r"confidence: expected shape \[2\]"),
    (dict(confidence=np.zeros(2, np.int32)), "confidence: expected floats"),
    (dict(class_id=np.zeros(2, np.float32)), "class_id: expected integers"),
    (dict(class_id=np.zeros((2, 1), np.int32)), r"class_id: expected shape \[2\]"),
    (dict(class_name=["a"]), "class_name: expected 2 strings"),
    (dict(class_name="ab"), "class_name: expected a list"),
])
def test_inconsistent_fields_are_refused_naming_the_field(fields, message):
    good = dict(xyxy=np.zeros((2, 4), np.int32), confidence=np.zeros(2, np.float32),
                class_id=np.zeros(2, np.int32), class_name=["a", "b"])
    with pytest.raises(ValueError, match=message):
        Detections(**{**good, **fields})


def test_other_integer_and_float_dtypes_are_stored_as_the_documented_ones():
    d = Detections(np.array([[1, 2, 3, 4]], np.int64), np.array([0.5], np.float64), np.array([3], np.uint8), ["x"])
    assert (d.xyxy.dtype, d.confidence.dtype, d.class_id.dtype) == (np.int32, np.float32, np.int32)


def test_indexing_masks_slices_and_iteration_return_detections_in_order():
    d = _three()
    assert len(d) == 3
    assert d[1] == Detections(np.array([[5, 5, 20, 30]]), np.array([0.5]), np.array([1]), ["b"])
    assert d[-1].class_name == ["a"] and d[1:].class_name == ["b", "a"]
    assert d[d.class_id == 0] == d[[0, 2]]
    assert len(d[np.zeros(3, bool)]) == 0 and len(d[[]]) == 0
    assert [(box.tolist(), score, cls, name) for box, score, cls, name in d][1] == ([5, 5, 20, 30], 0.5, 1, "b")
    with pytest.raises(IndexError):
        d[3]
    with pytest.raises(IndexError, match="boolean mask"):
        d[np.array([True, False])]


def test_supervision_round_trip_keeps_every_field():
    pytest.importorskip("supervision")
    d = _three()
    converted = d.to_supervision()
    assert Detections.from_supervision(converted) == d
    converted.data = {}
    assert Detections.from_supervision(converted, class_names=["a", "b"]) == d
    with pytest.raises(ValueError, match="pass class_names"):
        Detections.from_supervision(converted)
