"""Trained weights as float16 in parts of at most 15 MiB (the device returns files of at most 16 MiB),
and the way back: parts -> rfdetr checkpoint -> model packages (stretch and letterbox, ONNX included).

Format: `weights.part0`, `weights.part1`, ... are the pieces of one stream: an 8-byte length, a JSON
header (tensor names, shapes, dtypes; the checkpoint's other keys), then the float16 weights split into
their low and high bytes, each plane LZMA-compressed in 4 MiB chunks (about 80 % of the raw float16 size).

    python benchmarks/train/pack.py unpack --parts PARTS_DIR --out /work/trained-nano   # regenerate
"""

from __future__ import annotations

import argparse
import json
import lzma
import shutil
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

PART_BYTES = 15 * 2**20
CHUNK = 4 * 2**20  # bytes of one plane compressed apart (in parallel)
LETTERBOX_DIMENSIONS = {"width": 640, "height": 640}


def round_to_float16(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each float tensor rounded to float16 and back to its dtype (what the parts will hold)."""
    out = {}
    for name, value in state_dict.items():
        if value.is_floating_point():
            half = value.detach().cpu().half()
            if not torch.isfinite(half).all():
                raise ValueError(f"{name}: does not fit float16")
            out[name] = half.to(value.dtype)
        else:
            out[name] = value.detach().cpu()
    return out


def pack(checkpoint: dict, out_dir: str | Path, prefix: str = "weights") -> list[Path]:
    """Write checkpoint (`model` state dict + JSON-able other keys) as parts; returns their paths."""
    state = checkpoint["model"]
    names = list(state)
    floats = [n for n in names if state[n].is_floating_point()]
    others = {n: state[n].flatten().tolist() for n in names if n not in floats}
    flat = torch.cat([state[n].detach().cpu().half().flatten() for n in floats]).numpy().view(np.uint8).reshape(-1, 2)
    pieces = [plane[i:i + CHUNK].tobytes() for plane in (flat[:, 0].copy(), flat[:, 1].copy())
              for i in range(0, len(plane), CHUNK)]
    with ThreadPoolExecutor(8) as pool:  # lzma releases the GIL
        compressed = list(pool.map(lambda piece: lzma.compress(piece, preset=6), pieces))
    header = {
        "floats": [[n, list(state[n].shape), str(state[n].dtype).removeprefix("torch.")] for n in floats],
        "others": {n: [v, str(state[n].dtype).removeprefix("torch."), list(state[n].shape)] for n, v in others.items()},
        "chunks": [len(c) for c in compressed],  # low-byte plane's chunks, then the high-byte plane's
        "checkpoint": {k: v for k, v in checkpoint.items() if k != "model"},
    }
    blob = json.dumps(header).encode()
    stream = struct.pack("<Q", len(blob)) + blob + b"".join(compressed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, start in enumerate(range(0, len(stream), PART_BYTES)):
        path = out_dir / f"{prefix}.part{i}"
        path.write_bytes(stream[start:start + PART_BYTES])
        paths.append(path)
    return paths


def unpack(parts_dir: str | Path, prefix: str = "weights") -> dict:
    """The checkpoint dict that `pack` wrote (float tensors are the float16-rounded values)."""
    parts = sorted(Path(parts_dir).glob(f"{prefix}.part*"), key=lambda p: int(p.suffix.removeprefix(".part")))
    if not parts:
        raise FileNotFoundError(f"{parts_dir}: no {prefix}.part* files")
    stream = b"".join(p.read_bytes() for p in parts)
    (length,) = struct.unpack("<Q", stream[:8])
    header = json.loads(stream[8:8 + length])
    bounds = np.cumsum([8 + length, *header["chunks"]])
    with ThreadPoolExecutor(8) as pool:
        pieces = list(pool.map(lambda i: lzma.decompress(stream[bounds[i]:bounds[i + 1]]), range(len(bounds) - 1)))
    planes = np.frombuffer(b"".join(pieces), np.uint8)
    lo, hi = planes[:len(planes) // 2], planes[len(planes) // 2:]
    halves = torch.from_numpy(np.stack([lo, hi], 1).reshape(-1).view(np.float16).copy())
    state, offset = {}, 0
    for name, shape, dtype in header["floats"]:
        count = int(np.prod(shape)) if shape else 1
        state[name] = halves[offset:offset + count].reshape(shape).to(getattr(torch, dtype))
        offset += count
    for name, (value, dtype, shape) in header["others"].items():
        state[name] = torch.tensor(value, dtype=getattr(torch, dtype)).reshape(shape)
    return {"model": state, **header["checkpoint"]}


def write_packages(checkpoint_path: str | Path, out: str | Path, onnx: bool = True) -> dict[str, Path]:
    """`out/stretch` (rfpipe.export's package) and `out/letterbox` (same weights, letterbox to 640x640 first)."""
    from rfpipe.config import CLASS_NAMES_FILE, CONFIG_FILE
    from rfpipe.export import export_checkpoint

    out = Path(out)
    stretch = export_checkpoint(checkpoint_path, out / "stretch", onnx=onnx)
    letterbox = out / "letterbox"
    letterbox.mkdir(parents=True, exist_ok=True)
    config = json.loads((stretch / CONFIG_FILE).read_text())
    config["network_input"].update(resize_mode="letterbox", dataset_version_resize_dimensions=LETTERBOX_DIMENSIONS)
    (letterbox / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    for name in (CLASS_NAMES_FILE, "weights.pth", "model_type.json", "weights.onnx"):
        if (stretch / name).is_file():
            shutil.copy(stretch / name, letterbox / name)
    return {"stretch": stretch, "letterbox": letterbox}


def main() -> None:
    parser = argparse.ArgumentParser(description="Rebuild the trained packages from the weight parts.")
    parser.add_argument("command", choices=["unpack"])
    parser.add_argument("--parts", required=True, help="folder holding weights.part0, weights.part1, ...")
    parser.add_argument("--out", required=True, help="folder to write checkpoint.pth, stretch/ and letterbox/ into")
    parser.add_argument("--no-onnx", action="store_true", help="leave out weights.onnx")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(unpack(args.parts), out / "checkpoint.pth")
    for name, path in write_packages(out / "checkpoint.pth", out, onnx=not args.no_onnx).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
