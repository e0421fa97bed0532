"""The background reaper: one thread per worker applies deadlines and retention."""

from __future__ import annotations

import logging
import random
import threading

from ..store import StoreUnavailable
from .monitor import Monitor

__all__ = ["Reaper"]

log = logging.getLogger(__name__)

#: Each round waits the interval times a factor in this range, so workers drift apart.
JITTER = (0.8, 1.2)
STOP_TIMEOUT_SECONDS = 5.0


class Reaper:
    """Calls :meth:`Monitor.reap` every ``interval`` seconds on a daemon thread.

    Started after gunicorn forks (see ``bridge.server.gunicorn_conf``), never in the app
    factory, so tests and tools that build an app get no threads.
    """

    def __init__(self, monitor: Monitor, interval: float):
        self.monitor = monitor
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread; a second call does nothing."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="bridge-reaper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to finish and wait for it (at most ``STOP_TIMEOUT_SECONDS``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_SECONDS)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval * random.uniform(*JITTER)):
            try:
                self.monitor.reap()
            except StoreUnavailable as exc:
                log.warning("reaper: store unavailable: %s", exc)
            except Exception:  # the thread must outlive any single bad round
                log.exception("reaper round failed")
