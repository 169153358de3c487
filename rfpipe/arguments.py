"""Command-line flags shared by the `rfpipe` commands and `rfpipe serve`: one definition each.

A flag means the same in every command: `--device` defaults to `default_device()` everywhere,
`--backend` and `--dtype` have the same choices wherever a model is loaded, `--implementation`
is spelled one way. The server's parser imports these too (the library never imports `tools`).

>>> parser = argparse.ArgumentParser(prog="demo")
>>> add_model_options(parser)
>>> add_implementation(parser, several=True)
>>> args = parser.parse_args(["--backend", "onnx", "--implementations", "cpu,reference"])
>>> args.device == default_device(), args.backend, args.implementation, backend_options(args)
(True, 'onnx', ['cpu', 'reference'], {})
"""

from __future__ import annotations

import argparse

from rfpipe.backends import BACKENDS
from rfpipe.devices import default_device
from rfpipe.preprocess import IMPLEMENTATIONS

BACKEND_CHOICES = ("auto", *BACKENDS)
DTYPE_CHOICES = ("float32", "tf32", "bfloat16", "float16")
COMPILE_CHOICES = ("none", "cudagraphs", "auto")
IMPLEMENTATION_CHOICES = ("auto", *IMPLEMENTATIONS)


def add_device(parser: argparse.ArgumentParser, *, several: bool = False) -> None:
    """`--device`: where the model runs (default: `default_device()`, cuda when a GPU is present)."""
    what = "cpu, cuda, cuda:1 ..." + (" or a comma list such as cuda:0,cuda:1 (one worker per device)" if several else "")
    parser.add_argument("--device", default=default_device(), help=f"{what} (default: cuda when available, else cpu)")


def add_model_options(parser: argparse.ArgumentParser, *, several_devices: bool = False,
                      compile_options: bool = False) -> None:
    """`--device`, `--backend` and `--dtype`: the flags of every command that loads a model; with
    `compile_options`, `--compile` and `--max-batch` too (the server defines its own `--max-batch`)."""
    add_device(parser, several=several_devices)
    parser.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                        help="runtime of the network (default: auto, the fastest the package and device allow)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES,
                        help="torch backend precision (float32: TF32 off; tf32: TF32 matmuls; default: the backend's)")
    if compile_options:
        parser.add_argument("--compile", choices=COMPILE_CHOICES,
                            help="torch backend: compile the forward with CUDA graphs per batch bucket "
                                 "(auto: on CUDA when Triton works, else eager)")
        parser.add_argument("--max-batch", type=int, help="the largest batch: frames per engine batch, and the torch backend's largest compiled bucket (default 8)")
        add_buckets(parser)


def parse_buckets(text: str) -> tuple[int, ...]:
    """'1,8,32' -> (1, 8, 32): the batch sizes `--buckets` compiles, sorted, each at least 1.

    >>> parse_buckets("32, 1,8")
    (1, 8, 32)
    """
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        sizes = []
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"--buckets takes a comma list of batch sizes >= 1, such as 1,8,32; got {text!r}")
    return tuple(sizes)


def add_buckets(parser: argparse.ArgumentParser) -> None:
    """`--buckets`: the batch sizes the compiled forward is built for, instead of every power of two."""
    parser.add_argument("--buckets", type=parse_buckets,
                        help="with --compile: the batch sizes compiled, a comma list such as 1,8,32 whose largest "
                             "is --max-batch (default: the powers of two up to --max-batch; each costs a compile "
                             "at start, and a batch runs padded up to the next bucket)")


def engine_max_batch(args: argparse.Namespace, default: int = 8) -> int:
    """The engine's batch limit the flags ask for: `--max-batch`, else the largest of `--buckets`, else 8.

    >>> engine_max_batch(argparse.Namespace(max_batch=None, buckets=(1, 8, 32)))
    32
    """
    if getattr(args, "max_batch", None) is not None:  # 0 and below are refused by whoever takes it
        return args.max_batch
    buckets = getattr(args, "buckets", None)
    return buckets[-1] if buckets else default


def check_buckets(buckets: tuple[int, ...] | None, max_batch: int | None, compile: str | None = "auto") -> None:
    """A `ValueError` unless the largest of `buckets` is `max_batch` (the engine's batch limit) and the
    forward is compiled (`buckets` shape nothing else).

    >>> check_buckets((1, 8), 16)
    Traceback (most recent call last):
    ValueError: the largest of --buckets (8) must be --max-batch (16)
    """
    if not buckets:
        return
    if compile in (None, "none"):
        raise ValueError("--buckets are the batch sizes of the compiled forward: add --compile auto (or cudagraphs)")
    if max_batch is not None and buckets[-1] != max_batch:
        raise ValueError(f"the largest of --buckets ({buckets[-1]}) must be --max-batch ({max_batch})")


def backend_options(args: argparse.Namespace) -> dict[str, object]:
    """The `Detector.load` keyword options the model flags ask for (none when left at their default)."""
    options = {name: getattr(args, name, None) for name in ("dtype", "compile", "max_batch", "buckets")}
    if options["buckets"]:
        check_buckets(options["buckets"], engine_max_batch(args), options["compile"])
        options["max_batch"] = options["buckets"][-1]
    return {name: value for name, value in options.items() if value is not None}


def _implementation_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in IMPLEMENTATION_CHOICES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown implementation {', '.join(map(repr, unknown)) or repr(text)} "
            f"(choose from {', '.join(IMPLEMENTATION_CHOICES)}; comma-separated)"
        )
    return names


def add_implementation(parser: argparse.ArgumentParser, *, several: bool = False, default: str | None = "auto",
                       help: str = "preprocessing implementation") -> None:
    """`--implementation`: one of auto, reference, cpu, cuda; with `several`, a comma list
    (`--implementations`, the older spelling, still works and is not shown in --help)."""
    if not several:
        parser.add_argument("--implementation", default=default, choices=IMPLEMENTATION_CHOICES,
                            help=f"{help} (default: {default})")
        return
    parser.add_argument("--implementation", type=_implementation_list, default=default,
                        help=f"{help}; comma-separated from {', '.join(IMPLEMENTATION_CHOICES)}")
    parser.add_argument("--implementations", dest="implementation", type=_implementation_list,
                        help=argparse.SUPPRESS)


def load_detector(args: argparse.Namespace):
    """The `Detector` the model flags name (`args.model`, `--device`, `--backend`, `--dtype`, `--compile`, ...)."""
    from rfpipe.detector import Detector

    return Detector.load(args.model, device=args.device, backend=args.backend, **backend_options(args))
