"""The mAP check PR #2477 owed: what each inexact input path costs the trained RF-DETR Nano.

For each package (stretch, letterbox) and each test image, the same torch weights are run on:
  exact        rfpipe's exact preprocessing (= inference-models' base preprocessor), float32 forward
  tensor       PR #2477's path: uint8 -> float -> torchvision F.resize(antialias=True) -> normalise
               (letterbox: the exact OpenCV letterbox first, then the tensor resize to the network size)
  perturb1     the exact path's resized uint8 image with each value moved by -1 / +1 with probability
               1/4 each (clipped), like pillow-simd's rounding differences, then normalised
  cv2-linear   rfpipe's `resize_filter: cv2-linear` (OpenCV INTER_LINEAR, no antialias)
  nvjpeg       JPEG decoded on the GPU (rfpipe.io.gpu, `serve --gpu-decode`), then exact preprocessing
  bf16         exact batch, bfloat16 forward
  compiled     exact batch, compiled float32 forward (CUDA graphs, one batch bucket of 1)
  compiled-bf16  exact batch, compiled bfloat16 forward (the engine's fastest configuration)
Reported per variant: COCO mAP@[.5:.95] and mAP@.5 (pycocotools) on all test images, on digits and
trees apart, a bootstrap 95 % interval over images (of the mAP and of its difference to exact, same
resamples; detections below 0.01 left out of the resamples), the share of images whose detection set at the deployment threshold differs from exact
(any box/class/count change; and a detection gained or lost), and the largest confidence change of a
matched detection. Writes map_check.json and map_check.md to --out.

    python benchmarks/train/evaluate.py --packages /tmp/pkg --data /tmp/ds --out $OUT
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dataset import CLASS_NAMES, TREE  # noqa: E402

import rfpipe  # noqa: E402
from rfpipe.config import CONFIG_FILE  # noqa: E402
from rfpipe.tools.parity import coco_map, compare_detections  # noqa: E402
from rfpipe.tools.predict import read_image  # noqa: E402

PERTURB_P = 0.25  # probability of -1 and of +1, each
BOOT_MIN_SCORE = 0.01
_BOOT: dict = {}


def cv2_linear_package(package: Path, scratch: Path) -> Path:
    """A copy of `package` whose config says `resize_filter: cv2-linear` (weights copied, not retrained)."""
    out = scratch / f"{package.name}-cv2-linear"
    shutil.copytree(package, out, ignore=shutil.ignore_patterns("weights.onnx"))
    config = json.loads((out / CONFIG_FILE).read_text())
    config["network_input"]["resize_filter"] = "cv2-linear"
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return out


def tensor_path(det: rfpipe.Detector, frame: np.ndarray, meta) -> torch.Tensor:
    """PR #2477's tensor resize (rfpipe's float-tensor input: torchvision antialiased resize), after the
    exact letterbox where the package letterboxes; the exact path's metadata maps the boxes back."""
    cfg = det.config
    if meta.nonsquare_intermediate_size is not None:
        dw, dh = meta.nonsquare_intermediate_size
        h, w = frame.shape[:2]
        s = min(dw / w, dh / h)
        nw, nh = int(w * s), int(h * s)
        canvas = np.full((dh, dw, 3), cfg.padding_value or 0, np.uint8)
        left, top = int((dw - nw) / 2), int((dh - nh) / 2)
        if (left, top) != (meta.pad_left, meta.pad_top):
            raise RuntimeError(f"letterbox geometry differs from rfpipe's: {(left, top)} vs {(meta.pad_left, meta.pad_top)}")
        canvas[top:top + nh, left:left + nw] = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LINEAR)
        frame = canvas
    tensor = torch.from_numpy(np.ascontiguousarray(frame)).to(det.device).permute(2, 0, 1).float().div(255)
    batch, _ = det.preprocess(tensor, implementation="reference")
    return batch


def perturbed(batch: torch.Tensor, config, seed: int) -> torch.Tensor:
    """The exact batch's uint8 values, each moved by +-1 with probability PERTURB_P each, renormalised."""
    mean = torch.tensor(config.normalization[0], device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(config.normalization[1], device=batch.device).view(1, 3, 1, 1)
    values = (batch * std + mean) * 255
    levels = values.round()
    if float((values - levels).abs().max()) > 0.01:
        raise RuntimeError("the exact batch does not invert to uint8 levels")
    g = torch.Generator(device="cpu").manual_seed(seed)
    u = torch.rand(batch.shape, generator=g).to(batch.device)
    delta = (u < PERTURB_P).float() * -1 + (u > 1 - PERTURB_P).float()
    levels = (levels + delta).clamp(0, 255)
    return ((levels / 255 - mean) / std).float().contiguous()


def _boot_one(indices: np.ndarray) -> dict[str, dict[str, float]]:
    gt, preds, parts = _BOOT["gt"], _BOOT["preds"], _BOOT["parts"]
    out = {}
    for part, keep in parts.items():
        rows, new_preds = [], {v: [] for v in preds}
        for new_id, i in enumerate(indices, start=1):
            image_id, size, boxes, classes = gt[i]
            mask = np.array([keep(c) for c in classes], bool)
            rows.append((new_id, size, boxes[mask], classes[mask]))
            for v in preds:
                new_preds[v] += [{**p, "image_id": new_id} for p in preds[v].get(image_id, []) if keep(p["category_id"])]
        cats = [c for c in range(1, len(CLASS_NAMES) + 1) if keep(c)]
        out[part] = {v: coco_map(rows, new_preds[v], cats)["map_50_95"] for v in preds}
    return out


def _keep(part: str):
    return {"all": lambda c: True, "digits": lambda c: c != TREE + 1, "trees": lambda c: c == TREE + 1}[part]


class _Keep:  # picklable category filter
    def __init__(self, part: str):
        self.part = part

    def __call__(self, c: int) -> bool:
        return _keep(self.part)(c)


ALL_VARIANTS = ("exact", "tensor", "perturb1", "cv2-linear", "nvjpeg", "bf16", "compiled", "compiled-bf16")
COMPILED = {"compiled": "float32", "compiled-bf16": "bfloat16"}  # variant -> dtype


def check_package(package: Path, data: Path, split: str, device: torch.device, confidence: float,
                  scratch: Path, *, wanted: tuple[str, ...] = ALL_VARIANTS,
                  limit: int | None = None) -> tuple[dict, list, dict]:
    coco = json.loads((data / f"{split}.json").read_text())
    if limit is not None:
        coco["images"] = coco["images"][:limit]
    anns: dict[int, list] = {}
    for a in coco["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    det = rfpipe.Detector.load(package, device=device, backend="torch")
    dets = {}
    if "cv2-linear" in wanted:
        dets["cv2-linear"] = rfpipe.Detector.load(cv2_linear_package(package, scratch), device=device, backend="torch")
    if "bf16" in wanted:
        dets["bf16"] = rfpipe.Detector.load(package, device=device, backend="torch", dtype="bfloat16")
    notes = {}
    for variant, dtype in COMPILED.items():
        if variant not in wanted:
            continue
        if device.type != "cuda":
            notes[variant] = "not run: compilation (CUDA graphs) needs CUDA"
            continue
        # one bucket: the check runs one image at a time (each extra bucket is 30-50 s of cold compiling)
        dets[variant] = rfpipe.Detector.load(package, device=device, backend="torch", compile="auto",
                                             dtype=dtype, max_batch=1)
        if dets[variant].backend.buckets is None:
            notes[variant] = "compilation failed (see the log): this row ran the eager forward"
    gpu = device.type == "cuda"
    if not gpu and "nvjpeg" in wanted:
        notes["nvjpeg"] = "not run: needs CUDA"
    variants = [v for v in ALL_VARIANTS if v in wanted and (v != "nvjpeg" or gpu) and (v not in COMPILED or v in dets)]
    preds = {v: {} for v in variants}
    stats = {v: {"changed": 0, "gained_or_lost": 0, "max_conf_delta": 0.0, "max_abs_input_diff": 0.0} for v in variants}
    gt = []
    t0 = time.time()
    for k, im in enumerate(coco["images"]):
        if k and k % 25 == 0:
            print(f"  {package.name}: {k}/{len(coco['images'])} images, {time.time() - t0:.0f} s", flush=True)
        path = data / split / im["file_name"]
        frame = read_image(path)
        batch, meta = det.preprocess(frame)
        inputs = {"exact": (det, batch, meta)}
        if "tensor" in variants:
            inputs["tensor"] = (det, tensor_path(det, frame, meta[0]), meta)
        if "perturb1" in variants:
            inputs["perturb1"] = (det, perturbed(batch, det.config, im["id"]), meta)
        if "cv2-linear" in variants:
            inputs["cv2-linear"] = (dets["cv2-linear"], *dets["cv2-linear"].preprocess(frame))
        if "bf16" in variants:
            inputs["bf16"] = (dets["bf16"], batch, meta)
        if "nvjpeg" in variants:
            inputs["nvjpeg"] = (det, *det.preprocess(read_image(path, device)))
        for variant in COMPILED:
            if variant in variants:
                inputs[variant] = (dets[variant], batch, meta)
        results = {}
        for v in variants:
            d, b, m = inputs[v]
            logits, boxes = d.forward(b)
            results[v] = (d.postprocess(logits, boxes, m, confidence=confidence)[0],
                          d.postprocess(logits, boxes, m, confidence=0.0)[0])
            stats[v]["max_abs_input_diff"] = max(stats[v]["max_abs_input_diff"], float((b - batch).abs().max()))
            preds[v][im["id"]] = [{"image_id": im["id"], "category_id": c + 1, "score": s,
                                   "bbox": [x[0], x[1], x[2] - x[0], x[3] - x[1]]}
                                  for x, c, s in zip(results[v][1].xyxy.tolist(), results[v][1].class_id.tolist(),
                                                     results[v][1].confidence.tolist(), strict=True)]
        ea, ea_all = results["exact"]
        for v in variants:
            vb, vb_all = results[v]
            same = (len(ea) == len(vb) and np.array_equal(ea.xyxy, vb.xyxy) and np.array_equal(ea.class_id, vb.class_id))
            c = compare_detections(ea, vb, ea_all, vb_all)
            stats[v]["changed"] += not same
            stats[v]["gained_or_lost"] += c["matched"] != c["a"] or c["matched"] != c["b"]
            stats[v]["max_conf_delta"] = max([stats[v]["max_conf_delta"], *c["confidence_deltas"]])
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                          for a in anns.get(im["id"], [])], dtype=np.float64).reshape(-1, 4)
        gt.append((im["id"], (im["width"], im["height"]), boxes,
                   np.array([a["category_id"] for a in anns.get(im["id"], [])], dtype=np.int64)))
    n = len(coco["images"])
    for v in variants:
        stats[v]["changed_share"] = stats[v]["changed"] / n
        stats[v]["gained_or_lost_share"] = stats[v]["gained_or_lost"] / n
    return {"variants": variants, "stats": stats, "notes": notes, "images": n}, gt, preds


def bootstrap(gt: list, preds: dict, resamples: int, seed: int, workers: int) -> dict:
    """95 % intervals over image resamples (all test images), of each mAP and of its difference to exact.

    Detections scored below BOOT_MIN_SCORE are left out here (not in the point estimates) to keep
    pycocotools' time bounded; every variant and every resample gets the same rule."""
    parts = {"all": _Keep("all")}
    kept = {v: {i: [p for p in ps if p["score"] >= BOOT_MIN_SCORE] for i, ps in pv.items()} for v, pv in preds.items()}
    _BOOT.update(gt=gt, preds=kept, parts=parts)
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(gt), len(gt)) for _ in range(resamples)]
    with get_context("fork").Pool(workers) as pool:
        samples = pool.map(_boot_one, draws, chunksize=max(1, resamples // (4 * workers)))
    out = {}
    for part in parts:
        out[part] = {}
        for v in preds:
            values = np.array([s[part][v] for s in samples], dtype=np.float64)
            diffs = values - np.array([s[part]["exact"] for s in samples], dtype=np.float64)
            out[part][v] = {"ci95": [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))],
                            "diff_ci95": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]}
    return out


def point_maps(gt: list, preds: dict) -> dict:
    out = {}
    for part in ("all", "digits", "trees"):
        keep = _keep(part)
        rows = [(i, s, b[[keep(c) for c in cl]], cl[[keep(c) for c in cl]]) for i, s, b, cl in gt]
        if part != "all":
            rows = [r for r in rows if len(r[3])]
        ids = {r[0] for r in rows}
        cats = [c for c in range(1, len(CLASS_NAMES) + 1) if keep(c)]
        out[part] = {v: coco_map(rows, [p for i in ids for p in preds[v].get(i, []) if keep(p["category_id"])], cats)
                     for v in preds}
        out[part]["images"] = len(rows)
    return out


def _f(value: float | None, spec: str = ".4f") -> str:
    """A number for the table; n/a where a part has no images (e.g. no tree tiles under --limit)."""
    return "n/a" if value is None else format(value, spec)


def markdown(report: dict) -> str:
    lines = [f"Test split: {report['images']} images ({report['images_digits']} digits, {report['images_trees']} tree "
             f"tiles); deployment threshold {report['confidence']}; bootstrap {report['resamples']} resamples over images "
             f"(detections scored below {BOOT_MIN_SCORE} left out of the resamples only).",
             "", "| package | path | mAP@[.5:.95] all (95 % CI) | diff vs exact (95 % CI) | mAP@.5 all | digits | trees | "
             "images changed at threshold | gained/lost | max conf change | max input diff |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in report["packages"].items():
        for v in r["variants"]:
            m, b, s = r["map"], r["bootstrap"]["all"][v], r["stats"][v]
            lines.append(
                f"| {name} | {v} | {m['all'][v]['map_50_95']:.4f} ({b['ci95'][0]:.4f}-{b['ci95'][1]:.4f}) | "
                f"{m['all'][v]['map_50_95'] - m['all']['exact']['map_50_95']:+.4f} ({b['diff_ci95'][0]:+.4f} to "
                f"{b['diff_ci95'][1]:+.4f}) | {m['all'][v]['map_50']:.4f} | {_f(m['digits'][v]['map_50_95'])} | "
                f"{_f(m['trees'][v]['map_50_95'])} | {100 * s['changed_share']:.1f} % | {100 * s['gained_or_lost_share']:.1f} % | "
                f"{s['max_conf_delta']:.4f} | {s['max_abs_input_diff']:.4f} |")
        for v, note in r["notes"].items():
            lines.append(f"\n{name} {v}: {note}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packages", required=True, help="folder with stretch/ and letterbox/ packages")
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", required=True)
    parser.add_argument("--confidence", type=float, default=0.5, help="deployment threshold")
    parser.add_argument("--resamples", type=int, default=50)
    parser.add_argument("--workers", type=int, default=15)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", default=",".join(ALL_VARIANTS),
                        help=f"comma-separated paths to run (exact is always run); default all: {','.join(ALL_VARIANTS)}")
    parser.add_argument("--packages-only", default="stretch,letterbox",
                        help="comma-separated packages to check, of stretch,letterbox")
    parser.add_argument("--limit", type=int, default=None, help="only the first N test images")
    parser.add_argument("--json-name", default="map_check", help="file stem of the JSON and markdown outputs")
    args = parser.parse_args()
    wanted = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    unknown = sorted(set(wanted) - set(ALL_VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(ALL_VARIANTS)}")
    wanted = ("exact", *[v for v in wanted if v != "exact"])
    names = [n.strip() for n in args.packages_only.split(",") if n.strip()]
    if not names or set(names) - {"stretch", "letterbox"}:
        parser.error(f"--packages-only takes stretch and/or letterbox, got {args.packages_only!r}")
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"confidence": args.confidence, "resamples": args.resamples, "bootstrap_min_score": BOOT_MIN_SCORE, "perturb_probability_each_sign": PERTURB_P,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "threads": torch.get_num_threads(), "limit": args.limit, "packages": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for name in names:
            t0 = time.time()
            result, gt, preds = check_package(Path(args.packages) / name, Path(args.data), args.split, device,
                                              args.confidence, Path(scratch), wanted=wanted, limit=args.limit)
            result["map"] = point_maps(gt, preds)
            result["bootstrap"] = bootstrap(gt, preds, args.resamples, 0, args.workers)
            result["seconds"] = time.time() - t0
            report["packages"][name] = result
            report.update(images=result["images"], images_digits=result["map"]["digits"]["images"],
                          images_trees=result["map"]["trees"]["images"])
            print(f"{name}: {json.dumps(result['map']['all'])} ({result['seconds']:.0f} s)", flush=True)
            (out / f"{args.json_name}.json").write_text(json.dumps(report, indent=1))  # after each package
    (out / f"{args.json_name}.json").write_text(json.dumps(report, indent=1))
    (out / f"{args.json_name}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
