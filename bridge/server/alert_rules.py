"""The Prometheus rules, rendered for a deployment's job selector and runbook URL.

``heartbeat-bridge rules`` prints them; ``alerts/heartbeat-bridge.rules.yml`` is its output
with the defaults. The source is ``alert_rules.yml.in`` beside this file, in which
``%(job_selector)s`` stands in every selector of the bridge's series and
``%(runbook_url)s`` in each alert's runbook link, as the Prometheus mixins do it; the
:class:`Timing` fields stand for the speed of the alerts that page on events.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from importlib import resources

__all__ = ["DEFAULT_JOB_SELECTOR", "DEFAULT_RUNBOOK_URL", "DEFAULT_TIMING", "RulesError", "Timing", "render"]

DEFAULT_JOB_SELECTOR = 'job="heartbeat-bridge"'
#: The runbooks shipped in the repository; point it at where yours are published.
#: The runbooks the bridge serves (``/runbooks``), at the address ``make run`` listens on: every
#: link absolute, so any receiver opens it. With an external URL they are served from there.
DEFAULT_RUNBOOK_URL = "http://127.0.0.1:8000/runbooks"
TEMPLATE = "alert_rules.yml.in"

_MATCHER = r'\s*[a-zA-Z_][a-zA-Z0-9_]*\s*(=|!=|=~|!~)\s*"(?:[^"\\]|\\.)*"\s*'
_SELECTOR = re.compile(f"{_MATCHER}(,{_MATCHER})*")
_ALERT = re.compile(r"\s*- alert: (\w+)")
_DURATION = re.compile(r"(0|([0-9]+(ms|s|m|h))+)")


@dataclass(frozen=True)
class Timing:
    """How fast the alerts that page on events speak, as Prometheus durations.

    The defaults are the fast ones: a failed run or a lost execution is final (it does not
    flap), so it needs no ``for``; the groups holding them are evaluated every 5 s.
    """

    #: how often the groups of the event alerts are evaluated (their ``interval``)
    event_interval: str = "5s"
    #: TaskExecutionFailed's ``for``
    failed_for: str = "0s"
    #: TaskExecutionLost's ``for``: the bridge's lost window is already the silence's debounce
    lost_for: str = "0s"
    #: TaskRunMissed's ``for``: a missed run stays missed until a run starts
    missed_for: str = "0s"
    #: TaskFailing's ``for`` (it pages only when no failed or lost run speaks for the task)
    failing_for: str = "15s"


DEFAULT_TIMING = Timing()


class RulesError(ValueError):
    """A job selector or runbook URL the rules cannot be rendered with."""


def runbook_link(runbook_url: str, alert: str) -> str:
    """Return the runbook link of ``alert``: ``{alert}`` in ``runbook_url`` replaced by its
    lower-case name, or that name appended as the anchor."""
    anchor = alert.lower()
    return runbook_url.replace("{alert}", anchor) if "{alert}" in runbook_url else f"{runbook_url}#{anchor}"


def _check(job_selector: str, runbook_url: str, external_url: str | None, timing: Timing) -> None:
    """Raise :class:`RulesError` for what :func:`render` refuses (see there)."""
    for name, value in asdict(timing).items():
        if not _DURATION.fullmatch(value):
            raise RulesError(
                f"--{name.replace('_', '-')} must be a Prometheus duration such as 5s or 1m, got {value!r}"
            )
    if timing.event_interval in ("0", "0s"):
        raise RulesError("--event-interval must be longer than 0s")
    if not _SELECTOR.fullmatch(job_selector):
        raise RulesError(
            f'the job selector must be label matchers such as job="heartbeat-bridge", got {job_selector!r}'
        )
    for name, url in (("runbook URL", runbook_url), ("external URL", external_url)):
        if url is not None and (not url.strip() or any(c in url for c in "\"'\n\r{}")):
            raise RulesError(f"the {name} must be one line without quotes or braces, got {url!r}")


def render(
    job_selector: str = DEFAULT_JOB_SELECTOR,
    runbook_url: str | None = None,
    external_url: str | None = None,
    timing: Timing = DEFAULT_TIMING,
) -> str:
    """Return the rules file selecting the bridge's series by ``job_selector`` (label
    matchers such as ``job="heartbeat-bridge"``), with runbook links made from ``runbook_url``,
    given the bridge's ``external_url`` a ``status_page`` link on each execution alert, and the
    event alerts as fast as ``timing`` says. Without a ``runbook_url`` the links go to the
    runbooks the bridge serves: ``<external_url>/runbooks``, else :data:`DEFAULT_RUNBOOK_URL`.

    Raises :class:`RulesError` for a selector that is not a list of label matchers, a URL
    holding a quote or a line break, or a timing that is not a Prometheus duration.
    """
    if runbook_url is None:
        runbook_url = external_url.rstrip("/") + "/runbooks" if external_url else DEFAULT_RUNBOOK_URL
    _check(job_selector, runbook_url, external_url, timing)
    template = resources.files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8")
    lines, alert = [], None
    for line in template[template.index("groups:") :].splitlines():  # the template's own notes stay behind
        match = _ALERT.match(line)
        alert = match.group(1) if match else alert
        if "%(runbook_url)s" in line:
            line = line.replace("%(runbook_url)s", runbook_link(runbook_url, alert or "").replace("%", "%%"))
        if "%(execution_page)s" in line:
            if external_url is None:
                continue
            page = external_url.rstrip("/").replace("%", "%%") + "/executions/{{ $labels.execution_id }}"
            line = line.replace("%(execution_page)s", page)
        lines.append(line)
    external = f" --external-url '{external_url}'" if external_url else ""
    timed = "".join(
        f" --{f.name.replace('_', '-')} {getattr(timing, f.name)}"
        for f in fields(Timing)
        if getattr(timing, f.name) != getattr(DEFAULT_TIMING, f.name)
    )
    header = (
        f"# Prometheus rules for Heartbeat Bridge, made by: heartbeat-bridge rules\n"
        f"#   --job-selector '{job_selector}' --runbook-url '{runbook_url}'{external}{timed}\n"
        "# Scrape the bridge through one address: every replica and worker answers the same,\n"
        "# so one target is the whole fleet.\n"
    )
    return header + "\n".join(lines) % {"job_selector": job_selector.strip(), **asdict(timing)} + "\n"
