"""A labelled detection set, COCO format, deterministic from a seed, from material that packages ship.

Two parts (one class list: the ten digits, then "tree"):
- **digits**: OpenCV's `digits.png` (5000 handwritten digits, 20x20 each, 500 per digit) pasted with
  random scale, aspect, position, ink colour and contrast onto random crops of real photographs
  (OpenCV's and scikit-image's sample photos). Boxes are the ink's extent, so they are exact. Each
  split uses its own digit instances (columns 0-69 train, 70-84 val, 85-99 test of the sheet), so
  the test digits were never seen in training. Images have random sizes (360-800 px a side), so the
  stretch and the letterbox packages see different geometry.
- **trees**: DeepForest 2.1.0's aerial images with Pascal VOC tree-crown boxes, cut into 400x400
  tiles; the largest image's tiles go to training, OSBS_029 to validation, SOAP_061 and the
  1035x1249 YELL crop to test.

Layout written: `<out>/<split>/<file>.jpg` (JPEG q90) and `<out>/<split>.json` (COCO; category ids are
class index + 1, the convention `rfpipe parity` uses). `fetch_material.sh` fills the material folder.

    python benchmarks/train/dataset.py --material /work/main/.carry/train --out /tmp/ds --train 6000
"""

from __future__ import annotations

import argparse
import json
import os
import xml.etree.ElementTree as ET
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

CLASS_NAMES = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "tree")
TREE = CLASS_NAMES.index("tree")
DIGIT_COLUMNS = {"train": range(0, 70), "val": range(70, 85), "test": range(85, 100)}
TREE_IMAGES = {
    "train": ("2019_YELL_2_528000_4978000_image_crop2",),
    "val": ("OSBS_029",),
    "test": ("SOAP_061", "2019_YELL_2_541000_4977000_image_crop"),
}
TILE = 400
JPEG_QUALITY = 90


def load_digits(material: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(patches [5000, 20, 20] uint8, labels [5000], sheet column [5000]) from digits.png."""
    sheet = cv2.imread(str(material / "digits.png"), cv2.IMREAD_GRAYSCALE)
    if sheet is None or sheet.shape != (1000, 2000):
        raise ValueError(f"{material / 'digits.png'}: expected OpenCV's 2000x1000 digits sheet")
    cells = sheet.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3).reshape(-1, 20, 20)
    rows, cols = np.divmod(np.arange(5000), 100)
    return cells, rows // 5, cols


def load_photos(material: Path) -> list[np.ndarray]:
    paths = sorted((material / "photos").glob("*.jpg"))
    if not paths:
        raise ValueError(f"{material / 'photos'}: no photos (run benchmarks/train/fetch_material.sh)")
    return [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths]


def _background(rng: np.random.Generator, photos: list[np.ndarray], width: int, height: int) -> np.ndarray:
    photo = photos[rng.integers(len(photos))]
    ph, pw = photo.shape[:2]
    scale = rng.uniform(0.4, 1.0)  # crop a window of this share of the photo, at the output's aspect
    cw = min(pw, max(16, int(pw * scale)))
    ch = min(ph, max(16, int(cw * height / width)))
    cw = min(pw, int(ch * width / height))
    x, y = rng.integers(0, pw - cw + 1), rng.integers(0, ph - ch + 1)
    out = cv2.resize(photo[y:y + ch, x:x + cw], (width, height), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def _overlaps(box: tuple[int, int, int, int], boxes: list[tuple[int, int, int, int]], margin: int = 2) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] + margin and b[0] < x1 + margin and y0 < b[3] + margin and b[1] < y1 + margin for b in boxes)


def compose(rng: np.random.Generator, photos: list[np.ndarray], digits: np.ndarray, labels: np.ndarray,
            pool: np.ndarray) -> tuple[np.ndarray, list[list[int]], list[int]]:
    """One image: a photo crop with 2-10 digits of `pool` pasted on it; boxes xyxy (exclusive ends)."""
    width, height = int(rng.integers(360, 801)), int(rng.integers(360, 801))
    image = _background(rng, photos, width, height).astype(np.float32)
    boxes: list[tuple[int, int, int, int]] = []
    classes: list[int] = []
    for _ in range(int(rng.integers(2, 11))):
        index = pool[rng.integers(len(pool))]
        patch = digits[index]
        ys, xs = np.nonzero(patch > 40)
        if len(xs) == 0:
            continue
        patch = patch[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        side = rng.uniform(22, 110)
        aspect = rng.uniform(0.85, 1.15)
        ph, pw = patch.shape
        h = max(8, int(round(side)))
        w = max(4, int(round(side * aspect * pw / ph)))
        if w >= width or h >= height:
            continue
        for _attempt in range(20):
            x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            if not _overlaps((x, y, x + w, y + h), boxes):
                break
        else:
            continue
        alpha = cv2.resize(patch, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255
        alpha *= rng.uniform(0.55, 1.0)  # contrast
        region = image[y:y + h, x:x + w]
        mean = region.reshape(-1, 3).mean(0)
        ink = 255 - mean if rng.random() < 0.8 else rng.uniform(0, 255, 3)  # mostly contrasting ink
        ink = np.clip(ink + rng.normal(0, 30, 3), 0, 255)
        image[y:y + h, x:x + w] = region * (1 - alpha[..., None]) + ink * alpha[..., None]
        boxes.append((x, y, x + w, y + h))
        classes.append(int(labels[index]))
    noise = rng.normal(0, rng.uniform(0, 6), image.shape)
    image = np.clip(image + noise, 0, 255).round().astype(np.uint8)
    return image, [list(b) for b in boxes], classes


def _digit_shard(args: tuple) -> list[tuple[str, list[list[int]], list[int], tuple[int, int]]]:
    material, out_dir, split, seed, start, stop = args
    digits, labels, columns = load_digits(Path(material))
    photos = load_photos(Path(material))
    pool = np.nonzero(np.isin(columns, list(DIGIT_COLUMNS[split])))[0]
    rows = []
    for i in range(start, stop):
        rng = np.random.default_rng([seed, ("train", "val", "test").index(split), i])
        image, boxes, classes = compose(rng, photos, digits, labels, pool)
        name = f"digits_{i:05d}.jpg"
        cv2.imwrite(str(Path(out_dir) / name), image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        rows.append((name, boxes, classes, (image.shape[1], image.shape[0])))
    return rows


def read_voc(path: Path) -> list[list[int]]:
    """Pascal VOC boxes [xmin, ymin, xmax, ymax] (pixel ends exclusive) of one annotation file."""
    boxes = []
    for obj in ET.parse(path).getroot().iter("object"):
        b = obj.find("bndbox")
        boxes.append([int(float(b.find(k).text)) for k in ("xmin", "ymin", "xmax", "ymax")])
    return boxes


def tree_tiles(material: Path, out_dir: Path, split: str) -> list[tuple[str, list[list[int]], list[int], tuple[int, int]]]:
    """Cut the split's DeepForest images into TILE x TILE tiles; boxes clipped, kept if half inside."""
    rows = []
    for stem in TREE_IMAGES[split]:
        image = cv2.imread(str(material / "deepforest" / f"{stem}.jpg"), cv2.IMREAD_COLOR)
        boxes = np.array(read_voc(material / "deepforest" / f"{stem}.xml"), dtype=np.int64).reshape(-1, 4)
        h, w = image.shape[:2]
        for ty in range(0, max(1, h - TILE // 2), TILE):
            for tx in range(0, max(1, w - TILE // 2), TILE):
                x1, y1 = min(w, tx + TILE), min(h, ty + TILE)
                clipped = np.stack([np.clip(boxes[:, 0], tx, x1), np.clip(boxes[:, 1], ty, y1),
                                    np.clip(boxes[:, 2], tx, x1), np.clip(boxes[:, 3], ty, y1)], 1)
                area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
                inside = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
                keep = (inside >= 0.5 * np.maximum(area, 1)) & (inside > 0)
                if not keep.any():
                    continue
                name = f"tree_{stem}_{tx}_{ty}.jpg"
                tile = image[ty:y1, tx:x1]
                cv2.imwrite(str(out_dir / name), tile, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                kept = (clipped[keep] - [tx, ty, tx, ty]).tolist()
                rows.append((name, kept, [TREE] * len(kept), (tile.shape[1], tile.shape[0])))
    return rows


def coco(rows: list[tuple[str, list[list[int]], list[int], tuple[int, int]]]) -> dict:
    images, annotations = [], []
    for image_id, (name, boxes, classes, (w, h)) in enumerate(rows, start=1):
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        for box, cls in zip(boxes, classes, strict=True):
            bw, bh = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cls + 1,
                                "bbox": [box[0], box[1], bw, bh], "area": bw * bh, "iscrowd": 0})
    categories = [{"id": i + 1, "name": n, "supercategory": "tree" if n == "tree" else "digit"}
                  for i, n in enumerate(CLASS_NAMES)]
    return {"images": images, "annotations": annotations, "categories": categories}


def build(material: str | Path, out: str | Path, *, counts: dict[str, int], seed: int = 0,
          workers: int | None = None, trees: bool = True) -> dict[str, Path]:
    """Write every split under `out`; returns split -> COCO json path.

    >>> build("/work/main/.carry/train", "/tmp/ds", counts={"train": 20, "val": 5, "test": 5})  # doctest: +SKIP
    """
    material, out = Path(material), Path(out)
    workers = workers or min(16, os.cpu_count() or 1)
    paths = {}
    with ProcessPoolExecutor(workers) as pool:
        for split, count in counts.items():
            (out / split).mkdir(parents=True, exist_ok=True)
            step = max(1, -(-count // (workers * 4)))
            shards = [(str(material), str(out / split), split, seed, s, min(count, s + step)) for s in range(0, count, step)]
            rows = [row for shard in pool.map(_digit_shard, shards) for row in shard]
            if trees:
                rows += tree_tiles(material, out / split, split)
            paths[split] = out / f"{split}.json"
            paths[split].write_text(json.dumps(coco(rows)))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--material", default="/work/main/.carry/train")
    parser.add_argument("--out", required=True)
    parser.add_argument("--train", type=int, default=6000)
    parser.add_argument("--val", type=int, default=200)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    paths = build(args.material, args.out, counts={"train": args.train, "val": args.val, "test": args.test}, seed=args.seed)
    for split, path in paths.items():
        data = json.loads(path.read_text())
        print(f"{split}: {len(data['images'])} images, {len(data['annotations'])} boxes -> {path}")


if __name__ == "__main__":
    main()
