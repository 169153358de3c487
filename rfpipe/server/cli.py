"""`rfpipe serve MODEL ...`: load one detector per worker and serve them with uvicorn.

`rfpipe.tools.cli` forwards the arguments after `serve` to `main(argv)`. With `--processes N` (N > 1)
rfpipe.server.processes runs N such servers on one listening socket.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from rfpipe.io.decode import DEFAULT_MAX_PIXELS
from rfpipe.server.settings import ServerSettings, decode_device

logger = logging.getLogger("rfpipe.server")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rfpipe serve", description="Serve an RF-DETR model over the inference-server HTTP API.")
    p.add_argument("model", help="model package directory or checkpoint")
    p.add_argument("--model-id", help="id clients use (default: the package's directory name); "
                                      "the legacy route needs the 'project/version' form")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=9001)
    p.add_argument("--device", default="cpu", help="'cpu', 'cuda', or a comma list such as 'cuda:0,cuda:1' (one worker per device)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--workers-per-device", type=int, default=1, help="detectors (and worker threads) per device")
    p.add_argument("--processes", type=int, default=1,
                   help="server processes sharing the port (default 1: this process serves); each serves "
                        "devices[i::N], or one device each when N exceeds the devices; limits such as "
                        "--queue-size apply per process")
    p.add_argument("--max-batch", type=int, default=8, help="images per forward pass")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits to fill")
    p.add_argument("--queue-size", type=int, default=256, help="images admitted before answering 503")
    p.add_argument("--request-timeout", type=float, default=30.0, help="seconds from admission to result before 504")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="request body limit in MiB")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="pixels per image, checked before decoding")
    p.add_argument("--max-images", type=int, default=16, help="images per request")
    p.add_argument("--allow-url-input", action="store_true",
                   help="fetch images given as URLs (public addresses only; off by default)")
    p.add_argument("--decode-threads", type=int, default=None)
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


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    extra = {"decode_threads": args.decode_threads} if args.decode_threads else {}
    return ServerSettings(
        model_id=args.model_id or Path(args.model).resolve().name,
        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, queue_size=args.queue_size,
        request_timeout_s=args.request_timeout, max_body_bytes=int(args.max_body_mb * (1 << 20)),
        max_pixels=args.max_pixels, max_images=args.max_images, allow_url_input=args.allow_url_input,
        gpu_decode=args.gpu_decode, **extra,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the server until interrupted.

    >>> main(["path/to/package", "--device", "cuda:0,cuda:1", "--max-batch", "16"])  # doctest: +SKIP
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    try:
        devices = parse_devices(args.device)
        settings = settings_from_args(args)
        decode_device(settings, devices)  # refuses --gpu-decode without CUDA before any model loads
    except ValueError as error:
        build_parser().error(str(error))
    if args.workers_per_device < 1:
        build_parser().error("--workers-per-device must be at least 1")
    if args.processes < 1:
        build_parser().error("--processes must be at least 1")
    if args.processes > 1:
        from rfpipe.server.processes import serve_processes

        return serve_processes(args, devices, settings)

    import uvicorn

    app = load_app(args, devices, settings)
    uvicorn.run(app, host=args.host, port=args.port, **uvicorn_options(args))
    return 0


def load_app(args: argparse.Namespace, devices: list[str], settings: ServerSettings) -> Any:
    """The app serving `args.model` with `args.workers_per_device` detectors on each of `devices`."""
    from rfpipe import Detector
    from rfpipe.server.app import create_app

    detectors = []
    for device in devices:
        for _ in range(args.workers_per_device):
            detectors.append(Detector.load(args.model, device=device, backend=args.backend))
    logger.info("serving %r as %r on %s (%d worker(s), backend %s, pid %d)", args.model, settings.model_id,
                ",".join(devices), len(detectors), detectors[0].backend_name, os.getpid())
    return create_app(detectors, settings)


def uvicorn_options(args: argparse.Namespace) -> dict[str, Any]:
    """uvicorn.Config's arguments other than the app and where to listen: the same in every server process."""
    return {"log_level": args.log_level, "limit_concurrency": args.max_connections, "timeout_keep_alive": 30}
