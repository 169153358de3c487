"""`rfpipe serve MODEL ...`: flags -> a `Launch` and `ServerSettings`, then `rfpipe.server.launch.serve`.

`rfpipe.tools.cli` forwards the arguments after `serve` to `main(argv)`.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from rfpipe.arguments import add_buckets, backend_options, engine_max_batch
from rfpipe.devices import default_device
from rfpipe.engine import BATCH_POLICIES
from rfpipe.io.decode import DEFAULT_MAX_PIXELS
from rfpipe.server.launch import LOG_FORMAT, Launch, serve
from rfpipe.server.settings import ServerSettings, decode_device

COMPILE_MODES = ("none", "cudagraphs", "auto")
DTYPES = ("float32", "float16", "bfloat16")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rfpipe serve", description="Serve an RF-DETR model over the inference-server HTTP API.")
    p.add_argument("model", help="model package directory or checkpoint")
    p.add_argument("--model-id", help="id clients use (default: the package's directory name); "
                                      "the legacy route needs the 'project/version' form")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=9001)
    p.add_argument("--device", default=None,
                   help="'cpu', 'cuda', or a comma list such as 'cuda:0,cuda:1' (one engine per device; "
                        "default: cuda when available, else cpu)")
    p.add_argument("--backend", default="auto", choices=["auto", "onnx", "tensorrt", "torch"])
    p.add_argument("--dtype", choices=DTYPES, help="network precision (torch backend, and the engine's compiled forward)")
    p.add_argument("--compile", choices=COMPILE_MODES,
                   help="the engine's compiled forward: one per batch size bucket, compiled and run before "
                        "/readyz answers 200 (default: the detector's own default)")
    p.add_argument("--workers-per-device", type=int, default=1, help="detectors (and worker threads) per device")
    p.add_argument("--processes", type=int, default=1,
                   help="server processes sharing the port (default 1: this process serves); each serves "
                        "devices[i::N], or one device each when N exceeds the devices; limits such as "
                        "--queue-size apply per process")
    p.add_argument("--max-batch", type=int, default=None,
                   help="images per forward pass (default: the largest of --buckets, else 8)")
    add_buckets(p)
    p.add_argument("--batch-policy", choices=BATCH_POLICIES, default="dynamic",
                   help="dynamic: batches run at the size that arrived; fixed: every batch is padded to "
                        "--max-batch, so an answer does not depend on what else arrived (docs/serving.md)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long the first image of a batch waits for company (0: no wait, the lowest latency "
                        "for a few clients)")
    p.add_argument("--queue-size", type=int, default=256, help="images admitted before answering 503")
    p.add_argument("--request-timeout", type=float, default=30.0, help="seconds from admission to result before 504")
    p.add_argument("--body-timeout", type=float, default=30.0,
                   help="seconds to receive a request body before 408 (a client dripping its body is cut off)")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="on SIGTERM/SIGINT: seconds in-flight requests may take to finish before the server exits")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="request body limit in MiB")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="pixels per image, checked before decoding")
    p.add_argument("--max-images", type=int, default=16, help="images per request")
    p.add_argument("--allow-url-input", action="store_true",
                   help="fetch images given as URLs (public addresses only; off by default)")
    p.add_argument("--decode-threads", type=int, default=None,
                   help="image decode threads per server process (default: the cores shared by --processes, at most 8)")
    p.add_argument("--gpu-decode", action="store_true",
                   help="decode JPEG with nvJPEG on the first CUDA device (torchvision): NOT "
                        "bit-identical to OpenCV's decode, so answers drift slightly (docs/serving.md); "
                        "other formats still decode on the CPU")
    p.add_argument("--max-connections", type=int, default=1024, help="concurrent connections before uvicorn answers 503")
    p.add_argument("--log-level", default="info")
    return p


def parse_devices(text: str) -> list[str]:
    """'cuda:0,cuda:1' -> ['cuda:0', 'cuda:1']; duplicates and empty items are refused."""
    devices = [d.strip() for d in text.split(",")]
    if any(not d for d in devices) or len(set(devices)) != len(devices):
        raise ValueError(f"--device must be a comma list of distinct devices, got {text!r}")
    return devices


def default_server_decode_threads(processes: int, cpus: int | None = None) -> int:
    """Decode threads per server process: the machine's cores shared by the processes, 8 at most.

    >>> default_server_decode_threads(1, 16), default_server_decode_threads(4, 16), default_server_decode_threads(8, 16)
    (8, 4, 2)
    """
    cpus = cpus or os.cpu_count() or 1
    return max(1, min(8, cpus // max(1, processes)))


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    extra = {"decode_threads": args.decode_threads or default_server_decode_threads(args.processes)}
    return ServerSettings(
        model_id=args.model_id or Path(args.model).resolve().name,
        max_batch=engine_max_batch(args), max_wait_ms=args.max_wait_ms, batch_policy=args.batch_policy,
        queue_size=args.queue_size, request_timeout_s=args.request_timeout, body_timeout_s=args.body_timeout,
        max_body_bytes=int(args.max_body_mb * (1 << 20)), max_pixels=args.max_pixels, max_images=args.max_images,
        allow_url_input=args.allow_url_input, gpu_decode=args.gpu_decode, **extra,
    )


def load_options(args: argparse.Namespace) -> dict[str, Any]:
    """What `Detector.load` gets beside the device and backend: only the options given on the command line.

    The flags' one rule (`rfpipe.arguments.backend_options`, `--buckets` checked there); with `--compile`
    also `max_batch`, the largest bucket the engine compiles.

    >>> load_options(build_parser().parse_args(["m", "--compile", "auto", "--max-batch", "32"]))
    {'compile': 'auto', 'max_batch': 32}
    """
    options = backend_options(args)
    if args.compile:
        options["max_batch"] = engine_max_batch(args)
    return options


def launch_from_args(args: argparse.Namespace, devices: list[str]) -> Launch:
    return Launch(model=args.model, devices=tuple(devices), backend=args.backend,
                  workers_per_device=args.workers_per_device, processes=args.processes, host=args.host,
                  port=args.port, log_level=args.log_level, max_connections=args.max_connections,
                  drain_timeout_s=args.drain_timeout, load_options=load_options(args))


def main(argv: list[str] | None = None) -> int:
    """Run the server until interrupted.

    >>> main(["path/to/package", "--device", "cuda:0,cuda:1", "--max-batch", "16"])  # doctest: +SKIP
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    try:
        devices = parse_devices(args.device or default_device())
        settings = settings_from_args(args)
        decode_device(settings, devices)  # refuses --gpu-decode without CUDA before any model loads
        launch = launch_from_args(args, devices)
    except ValueError as error:
        parser.error(str(error))
    return serve(launch, settings)
