"""Train RF-DETR Nano from random initialisation on the benchmarks/train dataset, for a bounded time.

A short loop over rfdetr's own network (`RFDETRNano(pretrain_weights=None)`: no backbone weights, no
download) and its own criterion (`build_criterion_from_config`: Hungarian matching, focal/IoU class
loss, L1 + GIoU box loss over every decoder layer and the encoder proposals), AdamW, bf16 autocast on
CUDA, warm-up then cosine decay over the time budget, an EMA of the weights. The network input is
made by rfpipe's exact preprocessing (what deployment feeds it): half the images through the stretch
package's geometry, half through the letterbox package's (OpenCV letterbox to 640x640, then Pillow),
so both packages are in the training distribution. Preprocessed once, kept on the device.

Writes to --out: checkpoint.pth (rfdetr checkpoint, float16-rounded weights: the ones the parts
hold), history.json (loss per step, validation mAP over time), curve.png.

    python benchmarks/train/train.py --data /tmp/ds --out /tmp/run --seconds 420
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dataset import CLASS_NAMES, TREE  # noqa: E402
from pack import LETTERBOX_DIMENSIONS, round_to_float16  # noqa: E402

import rfpipe  # noqa: E402
from rfpipe.backends.torch import import_rfdetr, quiet_rfdetr, rfdetr_version  # noqa: E402
from rfpipe.config import checkpoint_config_dict  # noqa: E402
from rfpipe.tools.parity import coco_map  # noqa: E402


def configs(resolution: int) -> dict[str, rfpipe.ModelConfig]:
    """The stretch and letterbox package configs the trained weights are exported with."""
    stretch = checkpoint_config_dict(resolution, 1)  # trained at one fixed size: no dynamic sizes
    stretch["network_input"]["dynamic_spatial_size_supported"] = False
    del stretch["network_input"]["dynamic_spatial_size_mode"]
    letterbox = json.loads(json.dumps(stretch))
    letterbox["network_input"].update(resize_mode="letterbox", dataset_version_resize_dimensions=LETTERBOX_DIMENSIONS)
    return {name: rfpipe.ModelConfig.from_dict(c, class_names=list(CLASS_NAMES))
            for name, c in (("stretch", stretch), ("letterbox", letterbox))}


def to_network_boxes(boxes: np.ndarray, meta) -> np.ndarray:
    """Original-image xyxy -> normalised cxcywh of the network input (the inverse of rfpipe.postprocess)."""
    w_net, h_net = meta.nonsquare_intermediate_size or meta.inference_size
    x0 = (boxes[:, 0] * meta.scale_width + meta.pad_left) / w_net
    x1 = (boxes[:, 2] * meta.scale_width + meta.pad_left) / w_net
    y0 = (boxes[:, 1] * meta.scale_height + meta.pad_top) / h_net
    y1 = (boxes[:, 3] * meta.scale_height + meta.pad_top) / h_net
    out = np.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], 1)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def load_split(data: Path, split: str, cfgs: dict, device: torch.device, modes: str = "alternate",
               chunk: int = 64) -> tuple[torch.Tensor, list[dict], list]:
    """(float16 batch [N,3,R,R] on device, targets, per-image (id, size, boxes, classes, meta))."""
    coco = json.loads((data / f"{split}.json").read_text())
    by_image: dict[int, list] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    tensors, targets, rows = [], [], []
    images = coco["images"]
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk]
        with ThreadPoolExecutor(16) as pool:  # OpenCV decodes without the GIL
            frames = list(pool.map(lambda im: cv2.imread(str(data / split / im["file_name"]), cv2.IMREAD_COLOR), part))
        names = ["stretch" if modes == "stretch" or (start + i) % 2 == 0 else "letterbox" for i in range(len(part))]
        for name in ("stretch", "letterbox"):
            idx = [i for i, n in enumerate(names) if n == name]
            if not idx:
                continue
            batch, metas = rfpipe.preprocess([frames[i] for i in idx], cfgs[name], device=device)
            for i, b, m in zip(idx, batch, metas, strict=True):
                im = part[i]
                anns = by_image.get(im["id"], [])
                xyxy = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                                 for a in anns], dtype=np.float64).reshape(-1, 4)
                classes = np.array([a["category_id"] - 1 for a in anns], dtype=np.int64)
                tensors.append((start + i, b.half()))
                targets.append((start + i, {"boxes": torch.from_numpy(to_network_boxes(xyxy, m)).to(device),
                                            "labels": torch.from_numpy(classes).to(device)}))
                rows.append((start + i, (im["id"], (im["width"], im["height"]), xyxy, classes, m)))
    order = lambda items: [v for _, v in sorted(items, key=lambda t: t[0])]  # noqa: E731
    return torch.stack(order(tensors)), order(targets), order(rows)


def _float(value):
    if torch.is_tensor(value):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _float(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_float(v) for v in value)
    return value


def build_model(resolution: int, device: torch.device):
    rfdetr = import_rfdetr()
    from rfdetr.config import TrainConfig
    from rfdetr.models.lwdetr import build_criterion_from_config

    with quiet_rfdetr():
        wrapper = rfdetr.RFDETRNano(pretrain_weights=None, resolution=resolution, num_classes=len(CLASS_NAMES),
                                    positional_encoding_size=resolution // 16, device="cpu")
        criterion, _ = build_criterion_from_config(wrapper.model_config, TrainConfig(dataset_dir=".", output_dir="."))
    return wrapper, wrapper.model.model.to(device), criterion.to(device)


@torch.no_grad()
def evaluate(module: torch.nn.Module, batch: torch.Tensor, rows: list, config: rfpipe.ModelConfig,
             chunk: int = 32) -> dict:
    """COCO mAP of `module` (eval mode) on preprocessed `batch`; all classes, and digits / trees apart."""
    was_training = module.training
    module.eval()
    predictions = []
    for start in range(0, len(batch), chunk):
        out = module(batch[start:start + chunk].float())  # float32, as the packages run
        metas = [r[4] for r in rows[start:start + chunk]]
        dets = rfpipe.postprocess(out["pred_logits"].float(), out["pred_boxes"].float(), metas, config, confidence=0.0)
        for r, d in zip(rows[start:start + chunk], dets, strict=True):
            for box, cls, score in zip(d.xyxy.tolist(), d.class_id.tolist(), d.confidence.tolist(), strict=True):
                predictions.append({"image_id": r[0], "category_id": cls + 1, "score": score,
                                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    module.train(was_training)
    result = {}
    for part, keep in (("all", lambda c: True), ("digits", lambda c: c != TREE + 1), ("trees", lambda c: c == TREE + 1)):
        gt = [(r[0], r[1], r[2][[keep(c + 1) for c in r[3]]], r[3][[keep(c + 1) for c in r[3]]] + 1) for r in rows]
        gt = [g for g in gt if len(g[3]) or part == "all"]
        ids = {g[0] for g in gt}
        preds = [p for p in predictions if keep(p["category_id"]) and p["image_id"] in ids]
        cats = [c for c in range(1, len(CLASS_NAMES) + 1) if keep(c)]
        result[part] = coco_map(gt, preds, cats) if gt else {"map_50_95": None, "map_50": None}
    return result


def plot(history: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [h["step"] for h in history["loss"]]
    a.plot(steps, [h["loss"] for h in history["loss"]], lw=0.8)
    a.set(xlabel="step", ylabel="training loss (weighted sum)", yscale="log", title="RF-DETR Nano from random init")
    for key, style in (("all", "o-"), ("digits", "s--"), ("trees", "^:")):
        pts = [(h["step"], h[key]["map_50_95"]) for h in history["val"] if h[key]["map_50_95"] is not None]
        if pts:
            b.plot(*zip(*pts), style, label=f"{key} mAP@[.5:.95]")
    pts = [(h["step"], h["all"]["map_50"]) for h in history["val"] if h["all"]["map_50"] is not None]
    if pts:
        b.plot(*zip(*pts), "o-", label="all mAP@.5")
    b.set(xlabel="step", ylabel="validation mAP", title="validation (stretch, exact preprocessing)")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seconds", type=float, default=420,
                        help="training time budget, validation passes included (data loading excluded)")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--stop-at", type=float, default=None, help="unix time by which training stops, whatever --seconds says")
    parser.add_argument("--resolution", type=int, default=384)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--tree-repeat", type=int, default=20, help="how many times each tree tile is drawn per epoch")
    parser.add_argument("--eval-every", type=float, default=75, help="seconds between validation passes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfgs = configs(args.resolution)

    t0 = time.time()
    train_x, train_t, train_rows = load_split(data, "train", cfgs, device)
    val_x, _, val_rows = load_split(data, "val", cfgs, device, modes="stretch")
    print(f"data: {len(train_x)} train, {len(val_x)} val images preprocessed in {time.time() - t0:.1f} s", flush=True)
    is_tree = np.array([bool(len(t["labels"])) and bool((t["labels"] == TREE).all()) for t in train_t])
    weights = np.where(is_tree, args.tree_repeat, 1).astype(np.float64)
    weights /= weights.sum()
    rng = np.random.default_rng(args.seed)

    wrapper, module, criterion = build_model(args.resolution, device)
    module.train()
    ema = {k: v.detach().clone().float() for k, v in module.state_dict().items()}
    float_keys = [k for k, v in module.state_dict().items() if v.is_floating_point()]
    optimizer = torch.optim.AdamW(module.parameters(), lr=args.lr, weight_decay=1e-4)
    history = {"loss": [], "val": [], "args": vars(args)}
    step, start, last_eval = 0, time.time(), time.time()
    if args.stop_at is not None:
        args.seconds = max(1.0, min(args.seconds, args.stop_at - start))
    use_amp = device.type == "cuda"
    while True:
        elapsed = time.time() - start
        if (elapsed >= args.seconds or (args.max_steps is not None and step >= args.max_steps)
                or (args.stop_at is not None and time.time() >= args.stop_at)):
            break
        progress = elapsed / args.seconds
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        idx = rng.choice(len(train_x), size=args.batch, p=weights)
        x = train_x[idx].float()
        targets = [dict(train_t[i]) for i in idx]
        for j, i in enumerate(idx):  # tree tiles: random flips (crowns have no orientation)
            if is_tree[i]:
                boxes = targets[j]["boxes"].clone()
                if rng.random() < 0.5:
                    x[j] = x[j].flip(-1)
                    boxes[:, 0] = 1 - boxes[:, 0]
                if rng.random() < 0.5:
                    x[j] = x[j].flip(-2)
                    boxes[:, 1] = 1 - boxes[:, 1]
                targets[j]["boxes"] = boxes
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            outputs = module(x, targets)
        outputs = _float(outputs)  # the loss and the matcher in float32 (aux and encoder outputs included)
        losses = criterion(outputs, targets)
        loss = sum(losses[k] * criterion.weight_dict[k] for k in losses if k in criterion.weight_dict)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 0.1)
        optimizer.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            current = module.state_dict()
            torch._foreach_lerp_([ema[k] for k in float_keys], [current[k].float() for k in float_keys], 1 - decay)
        step += 1
        if step % 20 == 0 or step == 1:
            history["loss"].append({"step": step, "seconds": time.time() - start, "loss": loss.item(), "lr": lr})
            print(f"step {step} {time.time() - start:.0f}s loss {history['loss'][-1]['loss']:.3f} lr {lr:.2e}", flush=True)
        if time.time() - last_eval >= args.eval_every:
            last_eval = time.time()
            result = evaluate(module, val_x, val_rows, cfgs["stretch"])
            history["val"].append({"step": step, "seconds": time.time() - start, **result})
            print(f"val step {step} ({time.time() - last_eval:.1f} s): {json.dumps(result)}", flush=True)

    raw = {k: v.detach().clone() for k, v in module.state_dict().items()}
    finals = {}
    for name, state in (("raw", raw), ("ema", {k: v.to(raw[k].dtype) for k, v in ema.items()})):
        module.load_state_dict(round_to_float16(state))
        finals[name] = evaluate(module, val_x, val_rows, cfgs["stretch"])
        print(f"final {name} (float16-rounded): {json.dumps(finals[name])}", flush=True)
    best = max(finals, key=lambda n: finals[n]["all"]["map_50_95"] or 0.0)
    module.load_state_dict(round_to_float16(raw if best == "raw" else {k: v.to(raw[k].dtype) for k, v in ema.items()}))
    history["val"].append({"step": step, "seconds": time.time() - start, **finals[best], "final": best})
    history.update(steps=step, final=finals, exported=best, train_images=len(train_x), val_images=len(val_x),
                   device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                   torch=torch.__version__, rfdetr=rfdetr_version())

    model_config = json.loads(json.dumps(wrapper.model_config.model_dump(), default=str))
    for key in ("pretrain_weights", "device"):
        model_config.pop(key, None)
    torch.save({
        "model": {k: v.cpu() for k, v in module.state_dict().items()},
        "args": {"class_names": list(CLASS_NAMES), "num_classes": len(CLASS_NAMES), "resolution": args.resolution,
                 "pretrain_weights": None},
        "model_name": "RFDETRNano", "model_config": model_config, "rfdetr_version": rfdetr_version(),
    }, out / "checkpoint.pth")
    (out / "history.json").write_text(json.dumps(history, indent=1))
    plot(history, out / "curve.png")
    print(f"exported the {best} weights after {step} steps: {json.dumps(finals[best])}", flush=True)


if __name__ == "__main__":
    main()
