"""The `rfpipe` command: predict, bench, parity, export, and serve (the HTTP server's own CLI).

    rfpipe predict MODEL IMAGES_OR_DIRS... [--out DIR] [--json] [--confidence 0.4] [--device cuda]
    rfpipe bench MODEL [--images DIR] [--batch 1,4,8] [--implementation reference,cpu]
    rfpipe parity MODEL --images DIR --a reference --b torchvision [--annotations coco.json]
    rfpipe parity MODEL --images DIR --a cuda --b cuda+gpu-decode   # what serve --gpu-decode changes
    rfpipe export CHECKPOINT OUT_DIR
    rfpipe stream MODEL SOURCE... [--jsonl out.jsonl] [--video-dir DIR] [--view]   # files, streams, cameras
    rfpipe serve ...
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import torch

from rfpipe.arguments import (
    add_implementation,
    add_model_options,
    backend_options,
    load_detector,
)
from rfpipe.backends import BackendUnavailable
from rfpipe.config import ConfigError


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model package directory or rfdetr checkpoint (.pth)")
    add_model_options(parser, compile_options=True)
    parser.add_argument("--confidence", type=float, default=0.4, help="keep detections above this (default 0.4)")





def _predict(args: argparse.Namespace) -> int:
    from rfpipe.tools.predict import describe_model, find_inputs, run_predict

    inputs = find_inputs(args.inputs)
    if not inputs:
        raise ValueError("no image or video files among the inputs")
    if args.out is None and not args.json:
        args.json = True  # nothing would be written otherwise
    detector = load_detector(args)
    print(describe_model(args.model, detector), file=sys.stderr)
    count = run_predict(detector, inputs, args.out, args.json, progress=not args.quiet, confidence=args.confidence,
                        implementation=args.implementation)
    if args.out is not None and not args.quiet:
        print(f"{count} images/frames -> {args.out}", file=sys.stderr)
    return 0


def _sample_or_folder(folder: Path | None) -> list[Path]:
    from rfpipe.samples import sample_paths
    from rfpipe.tools.predict import IMAGE_SUFFIXES

    if folder is None:
        return sample_paths()
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"{folder}: no images")
    return paths


def _implementations(names: list[str] | None, device: torch.device) -> list[str]:
    if names is None:
        return ["reference", "cpu"] + (["cuda"] if device.type == "cuda" else [])
    return names


def _bench(args: argparse.Namespace) -> int:
    from rfpipe.tools import bench

    detector = load_detector(args)
    encoded = [p.read_bytes() for p in _sample_or_folder(args.images)]
    batches = [int(b) for b in args.batch.split(",")]
    baseline = None
    if args.compare_inference_models:
        baseline = bench.load_inference_models(Path(args.model), detector.backend_name, detector.device)
    rows = bench.run_bench(detector, encoded, batches, _implementations(args.implementation, detector.device),
                           reps=args.reps, warmup=args.warmup, confidence=args.confidence, baseline=baseline,
                           progress=not args.quiet)
    device_name = torch.cuda.get_device_name(detector.device) if detector.device.type == "cuda" else platform.processor() or "cpu"
    title = f"{detector!r} on {device_name}, {len(encoded)} frames"
    print(title)
    print(bench.format_table(rows))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        meta = {"model": str(args.model), "detector": repr(detector), "device": device_name,
                "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "frames": len(encoded)}
        (args.out / "bench.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        bench.plot(rows, args.out / "bench.png", title)
        print(f"-> {args.out / 'bench.json'}, {args.out / 'bench.png'}", file=sys.stderr)
    if args.engine:
        variants = [tuple(v.split("/")) for v in args.engine.split(",")]
        if any(len(v) != 2 for v in variants):
            raise ValueError(f"--engine takes COMPILE/DTYPE pairs such as none/float32,cudagraphs/bfloat16, got {args.engine!r}")
        engine_rows = bench.run_engine_bench(args.model, args.device, variants, encoded, batches,
                                             seconds=args.engine_seconds, backend=args.backend,
                                             confidence=args.confidence)
        print(bench.format_engine_table(engine_rows))
        if args.out is not None:
            (args.out / "bench_engine.json").write_text(json.dumps({"rows": engine_rows}, indent=1) + "\n")
            bench.plot_engine(engine_rows, args.out / "bench_engine.png", title)
            print(f"-> {args.out / 'bench_engine.json'}, {args.out / 'bench_engine.png'}", file=sys.stderr)
    return 0


def _parity(args: argparse.Namespace) -> int:
    from rfpipe.tools import parity

    side_a, side_b = parity.make_sides(args.model, args.a, args.b, args.device, args.backend, args.implementation,
                                       **backend_options(args))
    report = parity.run_parity(side_a, side_b, _sample_or_folder(args.images), args.confidence,
                               args.annotations, progress=not args.quiet)
    print(parity.format_report(report))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "parity.json").write_text(json.dumps(report, indent=1) + "\n")
        parity.plot(report, args.out / "parity.png")
        print(f"-> {args.out / 'parity.json'}, {args.out / 'parity.png'}", file=sys.stderr)
    return 0


def _export(args: argparse.Namespace) -> int:
    from rfpipe.export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out_dir, onnx=not args.no_onnx)
    print(f"package written to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rfpipe", description="Serve RF-DETR detectors, exact and fast.")
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="detect objects in images, folders and videos")
    _model_arguments(predict)
    predict.add_argument("inputs", nargs="+", help="image or video files, or folders of them")
    predict.add_argument("--out", type=Path, help="write <name>.json and annotated images/videos here")
    predict.add_argument("--json", action="store_true", help="print one JSON response per image to stdout")
    add_implementation(predict)
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.set_defaults(run=_predict)

    bench = commands.add_parser("bench", help="per-stage latency and end-to-end frames/s")
    _model_arguments(bench)
    bench.add_argument("--images", type=Path, help="folder of images (default: the bundled samples)")
    bench.add_argument("--batch", default="1,4,8", help="batch sizes, comma-separated (default 1,4,8)")
    add_implementation(bench, several=True, default=None,
                       help="preprocessing implementations to time (default: reference,cpu[,cuda])")
    bench.add_argument("--reps", type=int, default=20)
    bench.add_argument("--warmup", type=int, default=3)
    bench.add_argument("--compare-inference-models", action="store_true",
                       help="also time inference-models' own RF-DETR model on the same package and frames")
    bench.add_argument("--engine", metavar="COMPILE/DTYPE,...",
                       help="also run the engine (bytes -> detections, decode pool, pipelined) for each variant, "
                            "e.g. none/float32,cudagraphs/bfloat16: frames/s and GPU utilisation per --batch")
    bench.add_argument("--engine-seconds", type=float, default=3.0, help="seconds per engine row (default 3)")
    bench.add_argument("--out", type=Path, help="write bench.json and bench.png here")
    bench.add_argument("--quiet", action="store_true")
    bench.set_defaults(run=_bench)

    parity = commands.add_parser("parity", help="compare two preprocessing implementations, backends or decoders")
    _model_arguments(parity)
    parity.add_argument("--images", type=Path, help="folder of images (default: the bundled samples)")
    parity.add_argument("--a", required=True,
                        help="reference|cpu|cuda|torchvision (torchvision: the tensor-resize path of "
                             "roboflow/inference PR #2477, not exact), or a backend name; '+gpu-decode' (e.g. cuda+gpu-decode) "
                             "decodes JPEG as 'rfpipe serve --gpu-decode' does (torchvision on --device), "
                             "'+opencv' (the default) with OpenCV")
    parity.add_argument("--b", required=True, help="as --a")
    add_implementation(parity, help="preprocessing for backend-vs-backend runs")
    parity.add_argument("--annotations", type=Path, help="COCO json with ground truth (default: A's detections)")
    parity.add_argument("--out", type=Path, help="write parity.json and parity.png here")
    parity.add_argument("--quiet", action="store_true")
    parity.set_defaults(run=_parity)

    export = commands.add_parser("export", help="write a model package from an rfdetr training checkpoint")
    export.add_argument("checkpoint", type=Path)
    export.add_argument("out_dir", type=Path)
    export.add_argument("--no-onnx", action="store_true", help="torch weights only")
    export.set_defaults(run=_export)

    from rfpipe.tools.stream import add_parser as add_stream

    add_stream(commands, _model_arguments)

    commands.add_parser("serve", help="the HTTP server (rfpipe serve --help)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `rfpipe` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        from rfpipe.server.cli import main as serve_main

        return serve_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        return args.run(args)
    except (ConfigError, BackendUnavailable, ValueError, FileNotFoundError) as error:
        print(f"rfpipe {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
