"""`TerminalView`: a live table in the terminal (rich): per source fps, latency, dropped frames, CPU %.

A sink like the others (`run(..., sink=TerminalView())`); it ignores the frames and redraws from the
run's numbers twice a second on its own thread, on stderr.

>>> rfpipe.streams.run([0, 1], model, sink=TerminalView())  # model  # doctest: +SKIP
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

from rfpipe.streams.runner import Summary
from rfpipe.streams.sinks import FrameResult

REFRESH_S = 0.5


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render(summary: Summary) -> Any:
    """The rich table of a `Summary` (also used for the final one)."""
    from rich.table import Table

    table = Table(title=f"rfpipe stream · {summary.seconds:.0f} s · {summary.fps:.1f} frames/s · "
                        f"process CPU {summary.cpu_percent:.0f} %", title_justify="left")
    for name, justify in (("source", "left"), ("size", "right"), ("fps", "right"), ("frames", "right"),
                          ("dropped", "right"), ("skipped", "right"), ("latency ms (mean / p99)", "right"),
                          ("decode CPU %", "right"), ("status", "left")):
        table.add_column(name, justify=justify, overflow="fold")
    for row in summary.sources:
        size = f"{row.width}x{row.height}" if row.width else "-"
        declared = f" / {row.source_fps:.0f}" if row.source_fps else ""
        status = row.errors[-1] if row.errors else ("ended" if row.ended else "running")
        if row.errors and not row.ended and row.frames:
            status = f"running (last error: {row.errors[-1]})"
        table.add_row(row.source, size, f"{row.fps:.1f}{declared}", str(row.frames), str(row.dropped),
                      str(row.skipped), f"{_ms(row.latency_mean_ms)} / {_ms(row.latency_p99_ms)}",
                      f"{row.decode_cpu_percent:.0f}", status)
    dropped = {name: n for name, n in summary.sink_dropped.items() if n}
    if dropped:
        table.caption = "sink queues full, results dropped: " + ", ".join(f"{k} {v}" for k, v in dropped.items())
    return table


class TerminalView:
    """Redraws `render(status())` on stderr until the run ends (needs `rich`, in the `cli` extra)."""

    def __init__(self, *, refresh_s: float = REFRESH_S):
        self.refresh_s = refresh_s
        self._status: Callable[[], Summary] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def attach(self, status: Callable[[], Summary]) -> None:
        """Called by `run` before the sources start: where to read the numbers from."""
        from rich.console import Console
        from rich.live import Live

        self._status = status
        self._live = Live(render(status()), console=Console(file=sys.stderr), auto_refresh=False,
                          transient=False)
        self._live.start()
        self._thread = threading.Thread(target=self._run, name="rfpipe-stream-view")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self._live.update(render(self._status()), refresh=True)

    def write(self, result: FrameResult) -> None:
        pass

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._live.update(render(self._status()), refresh=True)
            self._live.stop()


__all__ = ["TerminalView", "render"]
