"""The compiled forward: `torch.compile(mode="reduce-overhead")` (inductor + CUDA graphs) per batch bucket.

A compiled network runs fastest at shapes it was compiled for, so batches go in static *buckets*
(powers of two up to `max_batch`, and `max_batch` itself): a batch of n rows is padded with zero
rows up to the smallest bucket that holds it and the padding's outputs are dropped (RF-DETR's
rows do not interact at inference). Every bucket is compiled and warmed at load, with a progress
bar on stderr; inductor's caches go to a directory keyed by everything that shapes the compiled
code (`cache_key`), under `~/.cache/rfpipe/compile/` (or `$RFPIPE_COMPILE_CACHE`), so a second
start of the same model on the same machine skips most of the compilation. A bucket warmed once leaves
a mark in that directory: a start that finds every mark loads the compiled code on its own thread
(no pool of compile workers to spawn), and a start that does not takes the directory's lock first, so
server processes starting together compile a model once and the others then load it.

Every call runs on one thread of its own: CUDA graph trees are per thread, so graphs recorded at
warm-up are the ones replayed, whichever thread calls. A compilation that fails falls back to the
eager forward with one log line; so does a call at a spatial size other than the warmed one.

>>> forward = CompiledForward(module_fn, device, buckets=(1, 2, 4, 8), input_size=(384, 384))  # gpu  # doctest: +SKIP
>>> logits, boxes = forward(batch)  # gpu  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from rfpipe.backends import Outputs, run_in_chunks

try:
    import fcntl
except ImportError:  # Windows: no lock between processes
    fcntl = None

logger = logging.getLogger("rfpipe")

COMPILE_MODES = ("none", "cudagraphs", "auto")
CACHE_FORMAT = 1  # bump when what is compiled (the wrapped function, the mode) changes
WARM_CALLS = 3  # cudagraph trees: a warm-up run, a recording, a replay


def bucket_sizes(max_batch: int) -> tuple[int, ...]:
    """Powers of two below `max_batch`, then `max_batch` itself.

    >>> bucket_sizes(8), bucket_sizes(12), bucket_sizes(1)
    ((1, 2, 4, 8), (1, 2, 4, 8, 12), (1,))
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    sizes = []
    size = 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return (*sizes, max_batch)


def bucket_for(rows: int, buckets: Sequence[int]) -> int:
    """The smallest bucket holding `rows` rows (the largest one for more: the caller chunks).

    >>> bucket_for(3, (1, 2, 4, 8)), bucket_for(8, (1, 2, 4, 8)), bucket_for(9, (1, 2, 4, 8))
    (4, 8, 8)
    """
    for size in buckets:
        if size >= rows:
            return size
    return buckets[-1]


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 over the module's parameter and buffer names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        data = tensor.detach().contiguous().cpu()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)};".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def matmul_settings() -> str:
    """The process-wide float32 matmul settings, which inductor's own cache keys on: setting
    `allow_tf32` at all (an earlier float32 model's load does) gives other compiled code.

    >>> matmul_settings().count(",")
    2
    """
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", None) or str(matmul.allow_tf32)
    return (f"{precision},{matmul.allow_fp16_reduced_precision_reduction},"
            f"{matmul.allow_bf16_reduced_precision_reduction}")


def cache_facts(device: torch.device) -> dict[str, str]:
    """The facts of this machine and process that shape compiled code: versions, GPU name and
    capability, float32 matmul settings."""
    facts = {"torch": torch.__version__, "triton": _version("triton"), "rfdetr": _version("rfdetr"),
             "python": platform.python_version(), "cuda": str(torch.version.cuda), "matmul": matmul_settings()}
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
        major, minor = torch.cuda.get_device_capability(device)
        facts["capability"] = f"{major}.{minor}"
    return facts


def cache_key(*, weights: str, dtype: str, input_size: tuple[int, int], facts: dict[str, str],
              bucket: int | None = None, mode: str = "cudagraphs") -> str:
    """A short hex key naming compiled code: weights digest, dtype, input (w, h), mode, machine facts,
    and the batch bucket when given (without it: the key of a model's cache directory).

    >>> facts = {"torch": "2.11.0", "gpu": "NVIDIA H200"}
    >>> a = cache_key(weights="ab", dtype="bfloat16", input_size=(384, 384), facts=facts, bucket=8)
    >>> a != cache_key(weights="ab", dtype="bfloat16", input_size=(384, 384), facts=facts, bucket=16)
    True
    """
    fields = {"format": CACHE_FORMAT, "weights": weights, "dtype": dtype, "input_size": list(input_size),
              "mode": mode, "facts": dict(sorted(facts.items()))}
    if bucket is not None:
        fields["bucket"] = bucket
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]


def cache_root() -> Path:
    """`$RFPIPE_COMPILE_CACHE`, else `$RFPIPE_CACHE/compile`, else `~/.cache/rfpipe/compile`."""
    if os.environ.get("RFPIPE_COMPILE_CACHE"):
        return Path(os.environ["RFPIPE_COMPILE_CACHE"])
    return Path(os.environ.get("RFPIPE_CACHE") or Path.home() / ".cache" / "rfpipe") / "compile"


def compile_unavailable(device: torch.device) -> str | None:
    """Why the compiled forward cannot run on `device` here (None when it can)."""
    if device.type != "cuda":
        return f"the compiled forward (CUDA graphs) needs a CUDA device, not {device}"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "the compiled forward needs Triton (pip install triton)"
    if sys.platform == "win32" or not hasattr(torch, "compile"):
        return f"torch.compile is not available with torch {torch.__version__} on {sys.platform}"
    return None


def _mark(cache_dir: Path, tag: str, bucket: int) -> Path:
    return cache_dir / f"warm-{tag}-b{bucket}"


@contextlib.contextmanager
def cache_turn(cache_dir: Path | None, buckets: Sequence[int], tag: str = "model") -> Iterator[bool]:
    """Yield whether `cache_dir` already holds the compiled code of `tag` (what is compiled: a short
    key) for every bucket, each warmed there once before.

    When it does not, the directory's lock is held for the body (other processes wait there, then
    find the code in the cache and load it together) and each bucket is marked warm if the body
    finishes without error. A mark says a warm-up succeeded with this directory, not that inductor
    kept everything: a start that finds marks but not the code compiles it again, on one thread.

    >>> import tempfile
    >>> directory = Path(tempfile.mkdtemp())
    >>> with cache_turn(directory, (1, 8)) as warm:
    ...     warm
    False
    >>> with cache_turn(directory, (8,)) as warm:
    ...     warm
    True
    """
    if cache_dir is None:
        yield False
        return
    if all(_mark(cache_dir, tag, bucket).exists() for bucket in buckets):
        yield True
        return
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "a+") as lock:
        locked = _lock(lock)
        try:
            warm = all(_mark(cache_dir, tag, bucket).exists() for bucket in buckets)
            if not warm:  # this process compiles; the others wait
                yield False
                for bucket in buckets:
                    _mark(cache_dir, tag, bucket).touch()
        finally:
            if locked:
                fcntl.flock(lock, fcntl.LOCK_UN)
    if warm:  # another process compiled it while this one waited: load without holding the lock
        yield True


def _lock(file: Any) -> bool:
    """Take `file`'s exclusive lock, waiting; False where there is none (Windows, a file system without locks)."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(file, fcntl.LOCK_EX)
    except OSError as error:  # compiling without the lock beats not compiling
        log_once("rfpipe: no lock on the compile cache (%s); processes starting together may each compile", error,
                 level=logging.INFO)
        return False
    return True


@contextlib.contextmanager
def compile_threads(threads: int | None) -> Iterator[None]:
    """Inductor's compile workers for the body (None: inductor's own choice, or $TORCHINDUCTOR_COMPILE_THREADS)."""
    import torch._inductor.config as config  # imported on first compile, not with rfpipe

    if threads is None or os.environ.get("TORCHINDUCTOR_COMPILE_THREADS") or not hasattr(config, "compile_threads"):
        yield
        return
    before = config.compile_threads
    config.compile_threads = threads
    try:
        yield
    finally:
        config.compile_threads = before


def _contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    """Row-major strides of `shape` (`is_contiguous()` ignores the strides of size-1 dimensions; dynamo does not).

    >>> _contiguous_strides((2, 3, 4))
    (12, 4, 1)
    """
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


_logged: set[str] = set()
_log_lock = threading.Lock()


def log_once(message: str, *args: Any, level: int = logging.WARNING) -> None:
    text = message % args if args else message
    with _log_lock:
        if text in _logged:
            return
        _logged.add(text)
    logger.log(level, text)


class CompiledForward:
    """`fn(batch) -> (logits, boxes)` compiled per bucket, warmed at construction; falls back to eager.

    `fn` takes a float32 batch and returns float32 outputs (casts inside it are compiled with it).
    `compiler` is torch.compile's backend ("inductor", or any backend torch.compile takes) and `mode`
    its mode (None with backends other than inductor).
    `cache_dir` is where inductor writes (None: inductor's default). After construction `compiled`
    says whether the compiled path is in use, `warm_s` holds each bucket's warm-up seconds and
    `cache_warm` whether the cache held every bucket already.
    """

    def __init__(self, fn: Callable[[torch.Tensor], Outputs], device: torch.device, *, buckets: Sequence[int],
                 input_size: tuple[int, int], cache_dir: Path | None = None, compiler: Any = "inductor",
                 mode: str | None = "reduce-overhead", progress: bool = True, name: str = "model"):
        self.eager = fn
        self.device = device
        self.buckets = tuple(sorted(set(buckets)))
        self.input_size = tuple(input_size)  # (width, height)
        self.cache_dir = cache_dir
        self.cudagraphs = mode == "reduce-overhead"
        self.name = name
        self.warm_s: dict[int, float] = {}
        self.cache_warm = False  # whether every bucket had been warmed in cache_dir before
        self.compiled = False
        self._runner = ThreadPoolExecutor(1, thread_name_prefix="rfpipe-forward")
        self._compiler = compiler
        options: dict[str, Any] = {"backend": compiler, "dynamic": False}
        if mode is not None:
            options["mode"] = mode
        self._fn = torch.compile(fn, **options)
        try:
            self._runner.submit(self._warm, progress).result()
            self.compiled = True
        except Exception as error:  # any compiler failure: the eager forward still answers
            log_once("rfpipe: compiling the forward of %s failed (%s: %s); running it eager",
                     name, type(error).__name__, str(error).splitlines()[0] if str(error) else "")

    def _limit_recompiles(self) -> None:
        config = torch._dynamo.config
        wanted = 2 * len(self.buckets) + 8  # one graph per bucket; the rest is headroom
        for attribute in ("recompile_limit", "cache_size_limit"):
            if hasattr(config, attribute):
                setattr(config, attribute, max(getattr(config, attribute), wanted))
                return

    def _progress(self, progress: bool):
        """The buckets wrapped in a tqdm bar on stderr (tqdm is the cli extra's; without it, log lines)."""
        if not progress:
            return self.buckets, lambda bucket: None
        try:
            from tqdm import tqdm
        except ImportError:
            return self.buckets, lambda bucket: logger.info("rfpipe: compiling %s at batch %d", self.name, bucket)
        bar = tqdm(self.buckets, desc=f"compiling {self.name}", unit="bucket", file=sys.stderr)
        return bar, lambda bucket: bar.set_postfix_str(f"batch {bucket}")

    def _cache_tag(self) -> str:
        """A short key of what this forward compiles, beyond the cache directory's own key: its warm marks' name."""
        compiler = self._compiler if isinstance(self._compiler, str) else getattr(
            self._compiler, "__qualname__", type(self._compiler).__name__)
        inductor_env = sorted((k, v) for k, v in os.environ.items()
                              if k.startswith("TORCHINDUCTOR_") and k != "TORCHINDUCTOR_CACHE_DIR")
        fields = (self.name, self.input_size, self.cudagraphs, compiler, matmul_settings(), inductor_env)
        return hashlib.sha256(repr(fields).encode()).hexdigest()[:12]

    def _warm(self, progress: bool) -> None:
        self._limit_recompiles()
        previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(self.cache_dir)
        width, height = self.input_size
        try:
            with cache_turn(self.cache_dir, self.buckets, self._cache_tag()) as warm, \
                    compile_threads(1 if warm else None):
                self.cache_warm = warm
                buckets, show = self._progress(progress)
                for bucket in buckets:
                    show(bucket)
                    start = time.perf_counter()
                    batch = torch.zeros((bucket, 3, height, width), device=self.device)
                    with torch.inference_mode():
                        for _ in range(WARM_CALLS):
                            self._call(batch)
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    self.warm_s[bucket] = time.perf_counter() - start
        finally:
            if self.cache_dir is not None:
                if previous is None:
                    os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
                else:
                    os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous

    def _call(self, batch: torch.Tensor) -> Outputs:
        # One kind of input per bucket (called in inference mode): dynamo guards on whether a tensor is an
        # inference tensor and on its strides, so a batch made outside inference mode (a caller's, or the
        # warm-up's) or laid out otherwise would compile its bucket a second time.
        if not batch.is_inference() or batch.stride() != _contiguous_strides(batch.shape):
            batch = batch.clone(memory_format=torch.contiguous_format)
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        logits, boxes = self._fn(batch)
        # CUDA graph outputs live in the graph's pool and the next replay overwrites them.
        return (logits.clone(), boxes.clone()) if self.cudagraphs else (logits, boxes)

    def _run(self, batch: torch.Tensor, stream: Any) -> Outputs:
        with torch.inference_mode():
            if stream is None:
                return run_in_chunks(self._call, batch, self.buckets[-1], self.bucket)
            with torch.cuda.stream(stream):
                return run_in_chunks(self._call, batch, self.buckets[-1], self.bucket)

    def bucket(self, rows: int) -> int:
        return bucket_for(rows, self.buckets)

    def __call__(self, batch: torch.Tensor) -> Outputs:
        if not self.compiled:
            return self.eager(batch)
        if (batch.shape[3], batch.shape[2]) != self.input_size:
            log_once("rfpipe: %s was compiled for %dx%d input; a %dx%d batch runs eager", self.name,
                     *self.input_size, batch.shape[3], batch.shape[2], level=logging.INFO)
            return self.eager(batch)
        # The runner thread replays on the caller's stream, so ordering stays on the GPU.
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        try:
            return self._runner.submit(self._run, batch, stream).result()
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as error:  # a failure inside compiled code: keep serving, eager from now on
            log_once("rfpipe: the compiled forward of %s failed (%s: %s); running it eager from now on",
                     self.name, type(error).__name__, error)
            self.compiled = False
            return self.eager(batch)

    def close(self) -> None:
        self._runner.shutdown(wait=False)
