"""Which compiled forwards fail, and where: untrained RF-DETR Nano checkpoints of a given class count,
compiled (inductor, CUDA graphs) at one dtype and batch each, with the whole traceback of a failure.

The trained Nano (11 classes) failed to compile in bfloat16 at batch 1 on an H100 (inductor
AssertionError, 2026-12-06) where the untrained 5-class Nano compiles; float16 failed on the untrained
one (2026-12-01). Each CASE is CLASSES:DTYPE:BATCH; they run in order in this process (dynamo reset
between them) and each prints one JSON line; a failure also prints the traceback's last frames.

    python benchmarks/compile_probe.py 11:bfloat16:1 5:bfloat16:1 11:bfloat16:8 5:float16:1  # gpu
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rfpipe  # noqa: E402
from rfpipe.testing.untrained import build_checkpoint  # noqa: E402


def probe(checkpoint: Path, dtype: str, batch: int, device: str, resolution: int) -> dict:
    detector = rfpipe.Detector.load(checkpoint, device=device, backend="torch", dtype=dtype, compile="none")
    fn = torch.compile(detector.backend._forward, mode="reduce-overhead", dynamic=False)
    x = torch.zeros((batch, 3, resolution, resolution), device=device)
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            for _ in range(3):
                torch.compiler.cudagraph_mark_step_begin()
                logits, _ = fn(x)
        want, _ = detector.forward(x)
        return {"compiled": True, "s": time.perf_counter() - start,
                "max_abs_logit_vs_eager": (logits.float() - want.float()).abs().max().item()}
    except Exception as error:
        frames = traceback.format_exception(error)
        print("".join(frames)[-6000:], file=sys.stderr, flush=True)
        return {"compiled": False, "s": time.perf_counter() - start, "error": f"{type(error).__name__}: {error}"[:2000]}
    finally:
        torch._dynamo.reset()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cases", nargs="+", help="CLASSES:DTYPE:BATCH")
    parser.add_argument("--resolution", type=int, default=384)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = []
    checkpoints: dict[int, Path] = {}
    scratch = Path(tempfile.mkdtemp(prefix="rfpipe-probe-"))
    for case in args.cases:
        classes, dtype, batch = case.split(":")
        classes = int(classes)
        if classes not in checkpoints:
            names = tuple(f"class{i}" for i in range(classes))
            checkpoints[classes] = build_checkpoint(scratch / f"nano{classes}.pth", args.resolution, class_names=names)
        row = {"classes": classes, "dtype": dtype, "batch": int(batch),
               **probe(checkpoints[classes], dtype, int(batch), args.device, args.resolution)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
