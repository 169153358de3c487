"""`rfpipe stream MODEL SOURCE...`: run a model on video files, image folders, rtsp/http streams and cameras.

    rfpipe stream model/ door.mp4 rtsp://10.0.0.2/live 0 --jsonl out.jsonl --video-dir annotated/ --view

Every source goes through one engine (`rfpipe.streams.run`); Ctrl-C or SIGTERM stops it cleanly
(frames in flight finish, outputs are flushed). The exit status is 1 when a source never opened.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from rfpipe.arguments import engine_max_batch, load_detector
from rfpipe.engine import BATCH_POLICIES


def add_parser(commands: argparse._SubParsersAction, model_arguments: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register `rfpipe stream` (`model_arguments` adds the flags every model command shares)."""
    parser = commands.add_parser("stream", help="detect objects in video files, folders, rtsp/http streams, cameras")
    model_arguments(parser)
    parser.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="video file, folder of images, rtsp:// or http(s):// URL, or camera index (0, 1, ...)")
    parser.add_argument("--jsonl", help="write one JSON line per frame here ('-' for stdout)")
    parser.add_argument("--video-dir", type=Path, help="write an annotated video per source here")
    parser.add_argument("--view", action=argparse.BooleanOptionalAction, default=None,
                        help="live table of fps, latency, dropped frames and CPU (default: when stderr is a terminal)")
    parser.add_argument("--summary", type=Path, help="write the final summary as JSON here")
    parser.add_argument("--max-fps", type=float, help="at most this many frames per second from each source")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--no-reconnect", action="store_true", help="a live source that fails ends instead of retrying")
    parser.add_argument("--max-wait-ms", type=float, default=2.0, help="how long a batch waits to fill (default 2)")
    parser.add_argument("--batch-policy", default="dynamic", choices=BATCH_POLICIES)
    parser.set_defaults(run=run_command)


def run_command(args: argparse.Namespace) -> int:
    import rfpipe.streams as streams

    if args.jsonl == "-" and args.view:
        raise ValueError("--jsonl - writes to stdout; the live view needs the terminal too (drop --view)")
    detector = load_detector(args)
    sinks: list = []
    if args.jsonl:
        sinks.append(streams.JsonLines(args.jsonl))
    if args.video_dir is not None:
        sinks.append(streams.AnnotatedVideo(args.video_dir))
    view = sys.stderr.isatty() if args.view is None else args.view
    if view:
        sinks.append(streams.TerminalView())
    summary = streams.run(args.sources, detector, sink=sinks, confidence=args.confidence, max_fps=args.max_fps,
                          reconnect=not args.no_reconnect, duration=args.duration,
                          max_batch=engine_max_batch(args),
                          max_wait_ms=args.max_wait_ms, batch_policy=args.batch_policy)
    if args.summary is not None:
        args.summary.write_text(json.dumps(summary.to_json(), indent=1) + "\n")
    if not view:
        from rich.console import Console

        Console(file=sys.stderr).print(streams.view.render(summary))
    never_opened = [s for s in summary.sources if s.connects == 0]
    for source in never_opened:
        print(f"rfpipe stream: error: {source.errors[-1] if source.errors else source.source + ': never opened'}",
              file=sys.stderr)
    return 1 if never_opened else 0
