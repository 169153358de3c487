"""The training-set builder of benchmarks/train: deterministic from its seed, boxes inside the images and
on the pasted ink, valid COCO. Runs on a small stand-in for the material (a drawn digits sheet, noise
photos, one VOC-labelled image), since the real material is fetched, not shipped."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset():
    sys.path.insert(0, str(ROOT / "benchmarks" / "train"))  # the worker processes import it by this name
    module = importlib.import_module("dataset")
    assert Path(module.__file__).resolve() == ROOT / "benchmarks" / "train" / "dataset.py"
    return module


@pytest.fixture(scope="module")
def material(tmp_path_factory, dataset):
    root = tmp_path_factory.mktemp("material")
    sheet = np.zeros((1000, 2000), np.uint8)
    for r in range(50):
        for c in range(100):
            cv2.putText(sheet, str(r // 5), (c * 20 + 4, r * 20 + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.55, 255, 2)
    cv2.imwrite(str(root / "digits.png"), sheet)
    (root / "photos").mkdir()
    rng = np.random.default_rng(5)
    for i in range(3):
        cv2.imwrite(str(root / "photos" / f"p{i}.jpg"), rng.integers(0, 256, (300 + 40 * i, 420, 3), dtype=np.uint8))
    (root / "deepforest").mkdir()
    objects = "".join(f"<object><name>Tree</name><bndbox><xmin>{x}</xmin><ymin>{y}</ymin><xmax>{x + 30}</xmax>"
                      f"<ymax>{y + 25}</ymax></bndbox></object>" for x, y in ((10, 10), (380, 100), (200, 420)))
    for stem in {s for stems in dataset.TREE_IMAGES.values() for s in stems}:
        cv2.imwrite(str(root / "deepforest" / f"{stem}.jpg"), rng.integers(0, 256, (500, 450, 3), dtype=np.uint8))
        (root / "deepforest" / f"{stem}.xml").write_text(f"<annotation>{objects}</annotation>")
    return root


COUNTS = {"train": 6, "val": 2, "test": 3}


@pytest.fixture(scope="module")
def built(dataset, material, tmp_path_factory):
    return [dataset.build(material, tmp_path_factory.mktemp(f"ds{i}"), counts=COUNTS, seed=3, workers=2) for i in range(2)]


def test_same_seed_same_dataset(built):
    first, second = built
    for split in COUNTS:
        assert first[split].read_text() == second[split].read_text()
        for image in json.loads(first[split].read_text())["images"]:
            a = (first[split].parent / split / image["file_name"]).read_bytes()
            assert a == (second[split].parent / split / image["file_name"]).read_bytes()


def test_other_seed_other_dataset(dataset, material, built, tmp_path):
    other = dataset.build(material, tmp_path, counts={"val": 2}, seed=4, workers=1, trees=False)
    a = cv2.imread(str(other["val"].parent / "val" / "digits_00000.jpg"))
    b = cv2.imread(str(built[0]["val"].parent / "val" / "digits_00000.jpg"))
    assert a.shape != b.shape or not np.array_equal(a, b)


def test_boxes_inside_images_and_on_ink(built, dataset):
    from pycocotools.coco import COCO

    for split, path in built[0].items():
        data = json.loads(path.read_text())
        coco = COCO(str(path))  # pycocotools accepts it
        assert len(coco.getImgIds()) == len(data["images"]) > COUNTS[split] - 1
        assert [c["name"] for c in data["categories"]] == list(dataset.CLASS_NAMES)
        assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"]) > 0
        images = {im["id"]: im for im in data["images"]}
        digit_boxes = 0
        for a in data["annotations"]:
            im = images[a["image_id"]]
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= im["width"] and y + h <= im["height"]
            assert a["area"] == w * h and 1 <= a["category_id"] <= len(dataset.CLASS_NAMES)
            frame = cv2.imread(str(path.parent / split / im["file_name"]))
            assert frame.shape[:2] == (im["height"], im["width"])
            if im["file_name"].startswith("digits_"):
                digit_boxes += 1
                # pasted ink: the box differs from the photo around it more than noise does
                assert frame[y:y + h, x:x + w].std() > 10
        assert digit_boxes > 0
        assert any(a["category_id"] == dataset.TREE + 1 for a in data["annotations"])


def test_splits_use_their_own_digits(dataset):
    columns = [set(dataset.DIGIT_COLUMNS[s]) for s in ("train", "val", "test")]
    assert not (columns[0] & columns[1]) and not (columns[0] & columns[2]) and not (columns[1] & columns[2])
    assert not set(dataset.TREE_IMAGES["train"]) & set(dataset.TREE_IMAGES["test"])


def test_missing_material_is_named(dataset, tmp_path):
    with pytest.raises(ValueError, match="digits.png"):
        dataset.build(tmp_path, tmp_path / "out", counts={"val": 1}, workers=1)
