"""Random-initialised RF-DETR Nano model packages, built offline (no weights can be downloaded).

The weights are UNTRAINED: detections are arbitrary boxes. The packages exist to exercise every
stage for real (rfdetr's own network, its ONNX export, the package layout) in tests, benchmarks
and the demo. One checkpoint is built, exported once, and laid out as four packages sharing its
weight files (hard links): stretch, letterbox, center-crop, and static crop (with a removed class).
Built packages are cached on disk, keyed by everything that shapes them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from rfpipe.backends.torch import import_rfdetr, quiet_rfdetr, rfdetr_version
from rfpipe.config import CLASS_NAMES_FILE, CONFIG_FILE
from rfpipe.export import export_checkpoint

BUILD_VERSION = 2  # bump when the layout or the weights recipe changes
RESOLUTION = 320  # smallest multiple of 32 whose 20x20 patch grid gives Nano's 300 queries real proposals
SEED = 0
CLASS_NAMES = ("person", "bicycle", "car", "dog", "cat")
# Untrained heads score every query near 1 %; raising the class bias gives a few detections above
# 0.4 per photo, and a random last box layer spreads box sizes, so outputs look like detections.
CLASS_BIAS_SHIFT = 3.0

# package name -> edits to the exported stretch config
VARIANTS = {
    "stretch": {},
    "letterbox": {"network_input": {"resize_mode": "letterbox",
                                    "dataset_version_resize_dimensions": {"width": 640, "height": 480}}},
    "center-crop": {"network_input": {"resize_mode": "center-crop",
                                      "dataset_version_resize_dimensions": {"width": 400, "height": 300}}},
    "static-crop": {
        "image_pre_processing": {"static-crop": {"enabled": True, "x_min": 10, "x_max": 90, "y_min": 5, "y_max": 95}},
        "class_names_operations": [{"type": "class_name_removal", "class_name": "bicycle"}],
    },
}


def build_checkpoint(path: str | Path, resolution: int = RESOLUTION, seed: int = SEED,
                     class_names: tuple[str, ...] = CLASS_NAMES) -> Path:
    """Write a random-initialised RF-DETR Nano training checkpoint (`model`, `args`, `model_name`, `model_config`).

    >>> build_checkpoint("/tmp/nano.pth")  # slow  # doctest: +SKIP
    """
    rfdetr = import_rfdetr()
    torch.manual_seed(seed)
    with quiet_rfdetr():
        wrapper = rfdetr.RFDETRNano(
            pretrain_weights=None, resolution=resolution, num_classes=len(class_names),
            positional_encoding_size=24,  # Nano's own grid, as trained packages carry it
            device="cpu",
        )
    module = wrapper.model.model
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        module.class_embed.bias.add_(CLASS_BIAS_SHIFT)
        last = module.bbox_embed.layers[-1]
        last.weight.normal_(0, 0.02, generator=generator)
        last.bias.normal_(0, 0.3, generator=generator)
        last.bias[2:] += 1.0  # wider boxes than the bare proposals
    model_config = json.loads(json.dumps(wrapper.model_config.model_dump(), default=str))
    for key in ("pretrain_weights", "device"):
        model_config.pop(key, None)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model": module.state_dict(),
            "args": {"class_names": list(class_names), "num_classes": len(class_names),
                     "resolution": resolution, "pretrain_weights": None},
            "model_name": "RFDETRNano",
            "model_config": model_config,
            "rfdetr_version": rfdetr_version(),
        },
        path,
    )
    return path


def _merge(base: dict, edits: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in edits.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def build_packages(root: str | Path, resolution: int = RESOLUTION, seed: int = SEED, onnx: bool = True) -> dict[str, Path]:
    """Build the checkpoint and the four packages under `root`; name -> path ('checkpoint' included).

    `onnx=False` leaves out weights.onnx (torch weights only), for machines without the ONNX exporter.
    """
    root = Path(root)
    checkpoint = build_checkpoint(root / "checkpoint.pth", resolution, seed)
    exported = export_checkpoint(checkpoint, root / "exported", onnx=onnx)
    base = json.loads((exported / CONFIG_FILE).read_text())
    paths = {"checkpoint": checkpoint}
    for name, edits in VARIANTS.items():
        package = root / name
        package.mkdir()
        (package / CONFIG_FILE).write_text(json.dumps(_merge(base, edits), indent=2) + "\n")
        shutil.copy(exported / CLASS_NAMES_FILE, package / CLASS_NAMES_FILE)
        for weights in ("weights.onnx", "weights.pth", "model_type.json"):
            if not (exported / weights).is_file():
                continue
            try:
                os.link(exported / weights, package / weights)
            except OSError:  # file systems without hard links
                shutil.copy(exported / weights, package / weights)
        paths[name] = package
    return paths


def default_cache_dir() -> Path:
    """`$RFPIPE_CACHE`, else `~/.cache/rfpipe`."""
    return Path(os.environ.get("RFPIPE_CACHE") or Path.home() / ".cache" / "rfpipe")


def cached_packages(cache_dir: str | Path | None = None, resolution: int = RESOLUTION, seed: int = SEED) -> dict[str, Path]:
    """The untrained packages, built on first use and reused after (keyed by versions and settings).

    >>> paths = cached_packages()  # slow  # doctest: +SKIP
    >>> rfpipe.Detector.load(paths["letterbox"])  # slow  # doctest: +SKIP
    """
    key = json.dumps([BUILD_VERSION, rfdetr_version(), torch.__version__, resolution, seed, CLASS_BIAS_SHIFT])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    root = Path(cache_dir or default_cache_dir()) / f"untrained-nano-{resolution}-{digest}"
    names = ["checkpoint", *VARIANTS]
    if not (root / "complete").is_file():
        shutil.rmtree(root, ignore_errors=True)  # a build that was interrupted
        root.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=root.name + ".", dir=root.parent))
        try:
            build_packages(scratch, resolution, seed)
            (scratch / "complete").write_text(key + "\n")
            try:
                scratch.rename(root)
            except OSError:  # built concurrently by another process: keep theirs
                pass
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return {name: root / ("checkpoint.pth" if name == "checkpoint" else name) for name in names}
