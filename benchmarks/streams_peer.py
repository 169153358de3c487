"""The peer for streams_bench.py: the inference package's InferencePipeline on the same video and package.

Run with the Python that has `inference` installed (PyPI `inference`, which serves RF-DETR through
inference-models), offline, from a local package directory:

    /path/to/inference-venv/bin/python benchmarks/streams_peer.py PACKAGE_DIR VIDEO [SOURCES]

PACKAGE_DIR is copied to a temporary folder with the `model_config.json` inference-models needs to
load a local package ({"model_architecture": "rfdetr", "task_type": "object-detection", "backend_type":
"onnx"}); SOURCES copies of VIDEO go into one pipeline. Prints one JSON line: frames, frames/s, CPU %.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.update(USE_INFERENCE_MODELS="True", ALLOW_INFERENCE_MODELS_DIRECTLY_ACCESS_LOCAL_PACKAGES="True",
                  OFFLINE_MODE="True", CORE_MODEL_YOLO_WORLD_ENABLED="False")


def main() -> None:
    package, video = Path(sys.argv[1]), sys.argv[2]
    sources = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    backend = "onnx" if (package / "weights.onnx").exists() else "torch"
    local = Path(tempfile.mkdtemp(prefix="rfpipe-peer-")) / package.name
    shutil.copytree(package, local)
    (local / "model_config.json").write_text(json.dumps(
        {"model_architecture": "rfdetr", "task_type": "object-detection", "backend_type": backend}))
    from inference import InferencePipeline

    frames = 0

    def on_prediction(predictions, video_frame) -> None:
        nonlocal frames
        frames += len(predictions) if isinstance(predictions, list) else 1

    pipeline = InferencePipeline.init(model_id=str(local), video_reference=[video] * sources if sources > 1 else video,
                                      on_prediction=on_prediction, confidence=0.4)
    wall, cpu = time.perf_counter(), time.process_time()
    pipeline.start()
    pipeline.join()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    from importlib.metadata import version

    print(json.dumps({"peer": f"inference {version('inference')} InferencePipeline ({backend})",
                      "sources": sources, "frames": frames, "fps": frames / wall, "cpu_percent": 100 * cpu / wall,
                      "cpu_ms_per_frame": 1000 * cpu / max(frames, 1)}))


if __name__ == "__main__":
    main()
