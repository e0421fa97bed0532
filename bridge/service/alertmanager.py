"""What Alertmanager says of a task or an execution: its alerts firing or silenced, read from
its v2 API (``BRIDGE_ALERTMANAGER_URL``) for the status pages.

One request answers every page for a few seconds (a page refreshes itself, and many people may
look at once); an Alertmanager that does not answer in time is reported, never raised.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["ActiveAlert", "AlertmanagerView", "Alerts"]

#: How long one answer of Alertmanager serves the pages.
CACHE_SECONDS = 5.0
TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class ActiveAlert:
    """An alert Alertmanager holds: ``state`` is ``active`` (notifying) or ``suppressed``
    (silenced or inhibited)."""

    name: str
    state: str
    labels: dict[str, str]
    starts_at: str
    summary: str
    silenced: bool
    inhibited: bool


@dataclass(frozen=True)
class Alerts:
    """What a page shows: the alerts, or why there are none to show (``error``)."""

    url: str
    alerts: tuple[ActiveAlert, ...] = ()
    error: str | None = None

    def about(self, **labels: str) -> list[ActiveAlert]:
        """Return the alerts whose labels include every one of ``labels``."""
        return [alert for alert in self.alerts if all(alert.labels.get(k) == v for k, v in labels.items())]

    @property
    def firing(self) -> int:
        """How many alerts notify now (neither silenced nor inhibited)."""
        return sum(1 for alert in self.alerts if alert.state == "active")


class AlertmanagerView:
    """Reads Alertmanager's alerts at ``url`` (its v2 API), keeping each answer for a few seconds."""

    def __init__(
        self, url: str, clock: Callable[[], float] = time.monotonic, fetch: Callable[[str], bytes] | None = None
    ):
        self.url = url.rstrip("/")
        self._clock = clock
        self._fetch = fetch or _fetch
        self._lock = threading.Lock()
        self._cached: tuple[float, Alerts] | None = None

    def alerts(self) -> Alerts:
        """Return Alertmanager's alerts now (at most CACHE_SECONDS old); never raises."""
        with self._lock:
            if self._cached is not None and self._clock() - self._cached[0] < CACHE_SECONDS:
                return self._cached[1]
            answer = self._read()
            self._cached = (self._clock(), answer)
            return answer

    def _read(self) -> Alerts:
        try:
            raw = json.loads(self._fetch(f"{self.url}/api/v2/alerts?active=true&silenced=true&inhibited=true"))
            alerts = tuple(_alert(item) for item in raw if isinstance(item, dict))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return Alerts(self.url, error=f"Alertmanager at {self.url} did not answer: {exc}")
        return Alerts(self.url, tuple(sorted(alerts, key=lambda a: (a.state != "active", a.name))))


def _alert(item: dict[str, Any]) -> ActiveAlert:
    status = item.get("status") or {}
    labels = {str(k): str(v) for k, v in (item.get("labels") or {}).items()}
    return ActiveAlert(
        name=labels.get("alertname", "?"),
        state=str(status.get("state", "active")),
        labels=labels,
        starts_at=str(item.get("startsAt", "")),
        summary=str((item.get("annotations") or {}).get("summary", "")),
        silenced=bool(status.get("silencedBy")),
        inhibited=bool(status.get("inhibitedBy")),
    )


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
        return response.read()
