"""How much a detector's answers move when an image is inferred in a batch instead of alone, no server.

The server's load check (`server_load.py --check`) compares each concurrent answer with the same
image's answer alone. With `--max-batch 1` they must be identical; with batching, the network runs
other batch sizes, whose matrix kernels round differently on a GPU. This measures that drift at the
Detector, with the same 64 images in batches of `--batch`: the preprocessed batch (which must be
bit-identical), the raw outputs, and the answers with server_load's drift statistics. If the
server's drift is no larger than this, the server adds none of its own.

    python benchmarks/batch_drift.py MODEL [--device cuda:0] [--batch 16] [--confidence 0.05] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from server_load import answer_drift, check_frames, without_ids

from rfpipe import Detector


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--confidence", type=float, default=0.05)
    p.add_argument("--json")
    args = p.parse_args()
    detector = Detector.load(args.model, device=args.device)
    frames = check_frames(args.images)
    report: dict = {"device": args.device, "batch": args.batch, "confidence": args.confidence,
                    "tf32_override": os.environ.get("NVIDIA_TF32_OVERRIDE"),
                    "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}
    with torch.inference_mode():
        alone_inputs, alone_outputs, alone = [], [], []
        for frame in frames:
            batch, meta = detector.preprocess(frame)
            logits, boxes = detector.forward(batch)
            alone_inputs.append(batch)
            alone_outputs.append((logits, boxes))
            alone.append(without_ids(detector.postprocess(logits, boxes, meta, confidence=args.confidence)[0].to_inference_json()))
        inputs_equal, logit_diff, box_diff, batched = True, 0.0, 0.0, []
        for start in range(0, len(frames), args.batch):
            group = frames[start: start + args.batch]
            batch, meta = detector.preprocess(group)
            logits, boxes = detector.forward(batch)
            for k in range(len(group)):
                inputs_equal &= torch.equal(batch[k: k + 1], alone_inputs[start + k])
                logit_diff = max(logit_diff, float((logits[k] - alone_outputs[start + k][0][0]).abs().max()))
                box_diff = max(box_diff, float((boxes[k] - alone_outputs[start + k][1][0]).abs().max()))
            batched += [without_ids(d.to_inference_json()) for d in detector.postprocess(logits, boxes, meta, confidence=args.confidence)]
    drifts = [answer_drift(a, b) for a, b in zip(alone, batched, strict=True)]
    report.update({
        "preprocessed_bit_identical": inputs_equal, "max_logit_diff": logit_diff, "max_box_output_diff": box_diff,
        "detections_alone": sum(len(a) for a in alone),
        "identical": sum(a == b for a, b in zip(alone, batched, strict=True)),
        "same_detections_within_2px": sum(d["unmatched"] == 0 for d in drifts),
        "unmatched_detections": sum(d["unmatched"] for d in drifts),
        "max_conf_delta": max(d["max_conf_delta"] for d in drifts),
        "max_box_delta_px": max(d["max_box_delta_px"] for d in drifts),
    })
    print(json.dumps(report), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
