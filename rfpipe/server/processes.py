"""`rfpipe serve --processes N`: N server processes on one listening socket, for when one process's GIL is the bound.

One process's Python host path (HTTP, JSON, decode dispatch, postprocess, kernel launches) holds
the GIL and tops out far below what a GPU can do; separate processes do not share a GIL. The
parent binds the socket once and spawns the children; each loads its own detectors and runs
uvicorn on the inherited socket, as `uvicorn --workers` does, and the kernel hands each new
connection to whichever process accepts first.
"""

from __future__ import annotations

import argparse
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

from rfpipe.server.settings import ServerSettings

logger = logging.getLogger("rfpipe.server")

STARTUP_FAILURE = 3  # uvicorn's exit status when a server cannot start (the port is taken, the app fails)
_STOP_GRACE_S = 10.0  # after --request-timeout, how long a stopping child may take before it is killed
_PARENT_POLL_S = 1.0


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


def serve_processes(args: argparse.Namespace, devices: list[str], settings: ServerSettings) -> int:
    """Run `args.processes` servers on one socket until SIGINT/SIGTERM (exit 0) or until a child exits (exit 1).

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
        sock = bind(args.host, args.port)
    except OSError as error:
        logger.error("cannot listen on %s:%d: %s", args.host, args.port, error)
        return STARTUP_FAILURE
    logger.info("listening on %s:%d with %d server processes (parent pid %d)", args.host, sock.getsockname()[1],
                args.processes, os.getpid())
    metrics_dir = tempfile.mkdtemp(prefix="rfpipe-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # before any child imports prometheus_client
    stop_signals: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _: stop_signals.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    spawn = multiprocessing.get_context("spawn")
    children: list[multiprocessing.process.BaseProcess] = []
    try:
        for index, served in enumerate(process_devices(devices, args.processes)):
            child = spawn.Process(target=_child, args=(args, served, settings, sock, os.getpid()),
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
        _stop(children, args.request_timeout + _STOP_GRACE_S)
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


def _child(args: argparse.Namespace, devices: list[str], settings: ServerSettings, sock: socket.socket,
           parent_pid: int) -> None:
    """One server process: load the detectors for `devices` and serve them on the parent's socket."""
    _exit_with_parent(parent_pid)
    import uvicorn

    from rfpipe.server.cli import LOG_FORMAT, load_app, uvicorn_options

    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)

    try:
        server = uvicorn.Server(uvicorn.Config(load_app(args, devices, settings), **uvicorn_options(args)))
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
