"""Checkpoint -> model package: `inference_config.json`, `class_names.txt`, `weights.onnx`, and the
torch weights (`weights.pth` + `model_type.json`), so every backend can load what `rfpipe export` writes.

The ONNX graph comes from rfdetr's own exporter (the one Roboflow packages are made with), with a
dynamic batch dimension.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

from rfpipe.backends.torch import (
    MODEL_TYPES,
    OPTIONAL_BUFFERS,
    checkpoint_info,
    quiet_rfdetr,
    read_checkpoint,
)
from rfpipe.config import CLASS_NAMES_FILE, CONFIG_FILE, checkpoint_config_dict

MODEL_TYPE_OF_CLASS = {cls: model_type for model_type, cls in MODEL_TYPES.items()}


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, onnx: bool = True) -> Path:
    """Write a model package for an rfdetr training checkpoint into `out_dir` (created if needed).

    >>> export_checkpoint("checkpoint_best_total.pth", "my-package")  # model  # doctest: +SKIP
    PosixPath('my-package')
    """
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no such checkpoint")
    wrapper = read_checkpoint(checkpoint)
    info = checkpoint_info(wrapper)
    class_name = info.model_name
    if class_name not in MODEL_TYPE_OF_CLASS:
        raise ValueError(f"{checkpoint}: {class_name} models cannot be packaged (supported: {sorted(MODEL_TYPE_OF_CLASS)})")
    out_dir.mkdir(parents=True, exist_ok=True)
    config = checkpoint_config_dict(info.resolution, info.size_divisor)  # the same config a direct load uses
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / CLASS_NAMES_FILE).write_text("\n".join(info.class_names) + "\n")
    (out_dir / "model_type.json").write_text(json.dumps({"model_type": MODEL_TYPE_OF_CLASS[class_name]}) + "\n")
    # The torch weights as inference-models 0.39's loader reads them (a strict load: no rfdetr-only buffers).
    weights = {k: v for k, v in wrapper.model.model.state_dict().items() if k not in OPTIONAL_BUFFERS}
    torch.save({"model": weights}, out_dir / "weights.pth")
    if onnx:
        with tempfile.TemporaryDirectory() as scratch, quiet_rfdetr():
            written = wrapper.export(output_dir=scratch, dynamic_batch=True, verbose=False, output_name="weights")
            shutil.move(str(written), out_dir / "weights.onnx")
    return out_dir
