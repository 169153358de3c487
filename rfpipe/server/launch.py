"""Launching `rfpipe serve`: load the detectors, build the app, run uvicorn in this process or in N on one socket.

`rfpipe.server.cli` turns flags into a `Launch` and `ServerSettings` and calls `serve`. With
`processes` > 1 the parent binds the socket once and spawns the children; each loads its own
detectors (one engine each) and runs uvicorn on the inherited socket, as `uvicorn --workers` does,
and the kernel hands each new connection to whichever process accepts first. Separate processes do
not share a GIL, which bounds one process's Python host path (HTTP, JSON, decode dispatch).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from rfpipe.server.settings import ServerSettings

logger = logging.getLogger("rfpipe.server")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass(frozen=True)
class Launch:
    """How a server is loaded and run (the request-level limits are `ServerSettings`).

    `load_options` go to `rfpipe.Detector.load` (backend options such as dtype, the engine's compile
    and max_batch); only the options given are passed.

    >>> Launch("pkgs/cars", devices=("cuda:0",), processes=2).processes
    2
    """

    model: str
    devices: tuple[str, ...] = ("cpu",)
    backend: str = "auto"
    workers_per_device: int = 1
    processes: int = 1
    host: str = "127.0.0.1"
    port: int = 9001
    log_level: str = "info"
    max_connections: int = 1024  # concurrent connections before uvicorn answers 503
    drain_timeout_s: float = 30.0  # on SIGTERM: how long in-flight requests may take to finish
    load_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.workers_per_device < 1:
            raise ValueError("--workers-per-device must be at least 1")
        if self.processes < 1:
            raise ValueError("--processes must be at least 1")
        if not self.drain_timeout_s >= 0:
            raise ValueError(f"--drain-timeout must be non-negative, got {self.drain_timeout_s}")


def serve(launch: Launch, settings: ServerSettings) -> int:
    """Serve until SIGINT/SIGTERM (then finish in-flight requests within `drain_timeout_s`, exit 0).

    >>> serve(Launch("pkgs/cars", devices=("cuda",)), ServerSettings(model_id="cars/3"))  # doctest: +SKIP
    """
    if launch.processes > 1:
        return serve_processes(launch, settings)
    import uvicorn

    app = load_app(launch, list(launch.devices), settings)
    stopped: list[int] = []
    # uvicorn handles SIGINT/SIGTERM itself (stop accepting, drain, shut down), then re-raises the
    # signal to the handler it found: this one records it, so a requested stop exits 0.
    previous = {s: signal.signal(s, lambda signum, _: stopped.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.run(app, host=launch.host, port=launch.port, **uvicorn_options(launch))
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if stopped:
        logger.info("stopped by %s", signal.Signals(stopped[0]).name)
    return 0


def load_app(launch: Launch, devices: list[str], settings: ServerSettings) -> Any:
    """The app serving `launch.model` with `launch.workers_per_device` detectors on each of `devices`."""
    from rfpipe import Detector
    from rfpipe.server.app import create_app

    started = time.perf_counter()
    detectors = []
    for device in devices:
        for _ in range(launch.workers_per_device):
            detectors.append(Detector.load(launch.model, device=device, backend=launch.backend, **launch.load_options))
    logger.info("serving %r as %r on %s (%d worker(s), backend %s, pid %d): loaded in %.1f s", launch.model,
                settings.model_id, ",".join(devices), len(detectors), detectors[0].backend_name, os.getpid(),
                time.perf_counter() - started)
    return create_app(detectors, settings)


def uvicorn_options(launch: Launch) -> dict[str, Any]:
    """uvicorn.Config's arguments other than the app and where to listen: the same in every server process.

    uvicorn's "auto" loop and HTTP parser are uvloop and httptools when installed (the `server` extra).
    On SIGTERM uvicorn stops accepting, lets in-flight requests finish for `drain_timeout_s`, then the
    app's shutdown answers what is still admitted.
    """
    return {"log_level": launch.log_level, "limit_concurrency": launch.max_connections, "timeout_keep_alive": 30,
            "timeout_graceful_shutdown": launch.drain_timeout_s, "loop": "auto", "http": "auto"}


def process_devices(devices: list[str], processes: int) -> list[list[str]]:
    """The devices each of `processes` processes serves: `devices[i::N]`, or one device each, round robin, past len(devices).

    >>> process_devices(["cuda:0", "cuda:1", "cuda:2"], 2)
    [['cuda:0', 'cuda:2'], ['cuda:1']]
    >>> process_devices(["cuda:0"], 3)
    [['cuda:0'], ['cuda:0'], ['cuda:0']]
    """
    if processes <= len(devices):
        return [devices[i::processes] for i in range(processes)]
    return [[devices[i % len(devices)]] for i in range(processes)]


STARTUP_FAILURE = 3  # uvicorn's exit status when a server cannot start (the port is taken, the app fails)
_STOP_GRACE_S = 10.0  # after --drain-timeout, how long a stopping child may take before it is killed
_PARENT_POLL_S = 1.0


def serve_processes(launch: Launch, settings: ServerSettings) -> int:
    """Run `launch.processes` servers on one socket until SIGINT/SIGTERM (exit 0) or until a child exits (exit 1).

    Models load only in the children, which start with `spawn` (fresh interpreters, never a fork of
    a process that has imported torch); the parent loads no model and never initialises CUDA. A
    child that exits on its own (failed start, crash, OOM kill) stops the whole server rather than
    being restarted here: the others are terminated and the exit status is 1, so a supervisor
    (systemd, Kubernetes) restarts one clean server instead of a process set that is quietly short
    of capacity. Children also stop within about a second when the parent dies, even by SIGKILL
    (which leaves the metrics directory behind). /metrics of any child shows the whole server
    (prometheus_client's multiprocess mode, in a temporary directory removed on exit); /readyz and
    /info answer for the process that receives them; --queue-size and the other limits apply per
    process.
    """
    try:
        sock = bind(launch.host, launch.port)
    except OSError as error:
        logger.error("cannot listen on %s:%d: %s", launch.host, launch.port, error)
        return STARTUP_FAILURE
    logger.info("listening on %s:%d with %d server processes (parent pid %d)", launch.host, sock.getsockname()[1],
                launch.processes, os.getpid())
    metrics_dir = tempfile.mkdtemp(prefix="rfpipe-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # before any child imports prometheus_client
    stop_signals: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _: stop_signals.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    spawn = multiprocessing.get_context("spawn")
    children: list[multiprocessing.process.BaseProcess] = []
    try:
        for index, served in enumerate(process_devices(list(launch.devices), launch.processes)):
            child = spawn.Process(target=_child, args=(launch, served, settings, sock, os.getpid()),
                                  name=f"rfpipe-serve-{index}")
            child.start()
            children.append(child)
            logger.info("process %d (pid %d) serves %s", index, child.pid, ",".join(served))
        sock.close()  # the children hold it now
        failed = _wait(children, stop_signals)
        if failed is not None:
            failed.join(5.0)  # its sentinel fires as it closes its files, a moment before its status is there
            logger.error("server process pid %d exited with status %s; stopping the others", failed.pid,
                         _status(failed.exitcode))
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(failed.pid, metrics_dir)  # its queue depth leaves the sum now
        else:
            logger.info("received %s; stopping %d server processes", signal.Signals(stop_signals[0]).name, len(children))
        _stop(children, launch.drain_timeout_s + _STOP_GRACE_S)
        return 0 if failed is None else 1
    finally:
        sock.close()
        _stop(children, 0.0)  # only reached with live children when the parent itself failed
        for s, handler in previous.items():
            signal.signal(s, handler)
        shutil.rmtree(metrics_dir, ignore_errors=True)


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host`:`port`, not yet listening (each child's uvicorn listens), inheritable."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _wait(children: list, stop_signals: list[int]) -> multiprocessing.process.BaseProcess | None:
    """Block until a stop signal arrives (None) or a child exits (that child)."""
    sentinels = {child.sentinel: child for child in children}
    while True:
        # A short timeout: the signal handler only records the signal, this loop acts on it.
        ended = multiprocessing.connection.wait(list(sentinels), timeout=0.5)
        if stop_signals:  # first: Ctrl-C and systemd signal the children too, which then end on their own
            return None
        if ended:
            return sentinels[ended[0]]


def _stop(children: list, grace_s: float) -> None:
    """SIGTERM every live child (uvicorn finishes in-flight requests), SIGKILL those alive after `grace_s`."""
    for child in children:
        if child.exitcode is None:
            child.terminate()
    deadline = time.monotonic() + grace_s
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
    for child in children:
        if child.exitcode is None:
            logger.warning("server process pid %d did not stop within %.0f s; killing it", child.pid, grace_s)
            child.kill()
            child.join()


def _status(exitcode: int | None) -> str:
    return f"{exitcode}" if exitcode is None or exitcode >= 0 else f"{exitcode} ({signal.Signals(-exitcode).name})"


def _child(launch: Launch, devices: list[str], settings: ServerSettings, sock: socket.socket,
           parent_pid: int) -> None:
    """One server process: load the detectors for `devices` and serve them on the parent's socket."""
    _exit_with_parent(parent_pid)
    import uvicorn

    logging.basicConfig(level=launch.log_level.upper(), format=LOG_FORMAT)

    try:
        server = uvicorn.Server(uvicorn.Config(load_app(launch, devices, settings), **uvicorn_options(launch)))
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent reports the stop
        return
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def _exit_with_parent(parent_pid: int) -> None:
    """SIGTERM this process once the parent is gone, however it ended (a SIGKILLed parent cannot stop us itself).

    A watcher thread compares the parent pid: portable, and it also covers a parent that died
    before this process got here.
    """
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_PARENT_POLL_S)
        logger.warning("the parent process %d is gone; stopping", parent_pid)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="rfpipe-parent-watch", daemon=True).start()
