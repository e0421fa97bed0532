"""The ``heartbeat-bridge`` command."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import MutableMapping

from .. import __version__
from ..service.config import ConfigError, check_tasks_file, load_settings, parse_bind
from ..store import StoreUnavailable, open_store
from ..telemetry.metrics import ExecutionRenderer
from .alert_rules import DEFAULT_JOB_SELECTOR, DEFAULT_RUNBOOK_URL, DEFAULT_TIMING, RulesError, Timing
from .alert_rules import render as render_rules

#: What ``serve`` adds to ``GLIBC_TUNABLES``: malloc asks for transparent huge pages.
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for bad configuration)."""
    parser = argparse.ArgumentParser(
        prog="heartbeat-bridge", description="Heartbeat Bridge: task heartbeats to Prometheus."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the service under gunicorn",
        description="Run Heartbeat Bridge under gunicorn. Everything else is configured by BRIDGE_* "
        "environment variables (the README's Configuration table): BRIDGE_STORE_URL, "
        "BRIDGE_WORKERS, tokens, limits.",
    )
    serve.add_argument("--bind", help="HOST:PORT to listen on (default: BRIDGE_BIND or 127.0.0.1:8000)")
    serve.add_argument("--workers", type=int, help="worker processes (default: BRIDGE_WORKERS or 2)")
    serve.set_defaults(run=_serve)
    token = commands.add_parser(
        "token",
        help="print the per-execution token of an execution id",
        description="Print the bearer token that lets one container report for its own execution only: "
        "HMAC-SHA256(BRIDGE_EXECUTION_TOKEN_SECRET, execution id). A launcher hands it to the "
        "container it starts; BRIDGE_EXECUTION_TOKEN_SECRET must be set here as on the bridge.",
    )
    token.add_argument("execution_id", help="the execution's id, as TASK_EXECUTION_ID (a UUID is lower-cased)")
    token.set_defaults(run=_token)
    rules = commands.add_parser("rules", help="print the Prometheus alerting and recording rules")
    rules.add_argument(
        "--job-selector",
        default=DEFAULT_JOB_SELECTOR,
        help=f"label matchers of the bridge's series (default: {DEFAULT_JOB_SELECTOR})",
    )
    rules.add_argument(
        "--runbook-url",
        default=None,
        help="where the runbooks are: each alert links to URL#<alert name in lower case>, "
        "or to URL with {alert} replaced (default: the bridge's own /runbooks, at the "
        f"external URL when one is given, else {DEFAULT_RUNBOOK_URL})",
    )
    rules.add_argument(
        "--external-url",
        default=None,
        help="the bridge's URL as people reach it: execution alerts link to their status "
        "pages there (default: BRIDGE_EXTERNAL_URL; none when unset)",
    )
    speed = rules.add_argument_group(
        "speed", "how fast the alerts that page on events speak (Prometheus durations); slower is calmer"
    )
    speed.add_argument(
        "--event-interval",
        default=DEFAULT_TIMING.event_interval,
        help="evaluation interval of the rule groups of the event alerts (default: "
        f"{DEFAULT_TIMING.event_interval}; scrape the bridge at least as often)",
    )
    speed.add_argument(
        "--failed-for",
        default=DEFAULT_TIMING.failed_for,
        help=f"for of TaskExecutionFailed (default: {DEFAULT_TIMING.failed_for}: a failed run is final)",
    )
    speed.add_argument(
        "--lost-for",
        default=DEFAULT_TIMING.lost_for,
        help=f"for of TaskExecutionLost (default: {DEFAULT_TIMING.lost_for}: the bridge already "
        "waited its lost window)",
    )
    speed.add_argument(
        "--missed-for",
        default=DEFAULT_TIMING.missed_for,
        help=f"for of TaskRunMissed (default: {DEFAULT_TIMING.missed_for}: a missed run stays missed)",
    )
    speed.add_argument(
        "--failing-for",
        default=DEFAULT_TIMING.failing_for,
        help=f"for of TaskFailing (default: {DEFAULT_TIMING.failing_for})",
    )
    rules.set_defaults(run=_rules)
    demo = commands.add_parser(
        "demo", add_help=False, help="the bridge with a simulated fleet (and Prometheus if installed)"
    )
    demo.set_defaults(run=_demo)
    alert_log = commands.add_parser(
        "alert-log", add_help=False, help="print the notifications Alertmanager posts (the example's receivers)"
    )
    alert_log.set_defaults(run=_alert_log)
    args, rest = parser.parse_known_args(argv)
    if rest and args.run not in (_demo, _alert_log):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    return args.run(args)


def _token(args: argparse.Namespace) -> int:
    from ..core.ids import normalise_id
    from ..web.auth import execution_token

    try:
        secret = load_settings().execution_token_secret
    except ConfigError as exc:
        print(f"heartbeat-bridge: {exc}", file=sys.stderr)
        return 2
    if secret is None:
        print("heartbeat-bridge: set BRIDGE_EXECUTION_TOKEN_SECRET to make execution tokens", file=sys.stderr)
        return 2
    canonical = normalise_id(args.execution_id)
    if canonical is None:
        print("heartbeat-bridge: not an execution id: 1 to 128 characters of A-Z a-z 0-9 . _ : -", file=sys.stderr)
        return 2
    print(execution_token(secret, canonical))
    return 0


def _rules(args: argparse.Namespace) -> int:
    try:
        external_url = args.external_url or load_settings().external_url
        timing = Timing(args.event_interval, args.failed_for, args.lost_for, args.missed_for, args.failing_for)
        sys.stdout.write(render_rules(args.job_selector, args.runbook_url, external_url, timing))
    except (RulesError, ConfigError) as exc:
        print(f"heartbeat-bridge: {exc}", file=sys.stderr)
        return 2
    return 0


def _alert_log(args: argparse.Namespace) -> int:
    from .alert_log import main as alert_log_main  # its options are its own

    return alert_log_main(args.rest)


def _demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main  # its options are its own (heartbeat-bridge demo --help)

    return demo_main(args.rest)


def _serve(args: argparse.Namespace) -> int:
    # gunicorn's config module reads the environment, so the flags travel that way.
    if args.bind:
        os.environ["BRIDGE_BIND"] = args.bind
    if args.workers is not None:
        os.environ["BRIDGE_WORKERS"] = str(args.workers)
    try:
        if args.bind:
            parse_bind("--bind", args.bind)
        settings = load_settings(warn_unknown=False)  # gunicorn's master reports unknown ones
        check_tasks_file(settings)  # here, once: a worker that boots later never fails on the file
        _check_free(settings.bind)
        # Create the schema (and render what an upgrade renders anew) once, and fail here, not in each worker.
        open_store(settings, ExecutionRenderer(settings.metric_labels)).close()
        _check_tracing()
    except (ConfigError, StoreUnavailable) as exc:
        print(f"heartbeat-bridge: {exc}", file=sys.stderr)
        return 2
    _ask_for_huge_pages(os.environ)
    gunicorn = [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        "python:bridge.server.gunicorn_conf",
        "bridge.web:create_app()",
    ]
    os.execv(sys.executable, gunicorn)  # gunicorn takes over this process and its signals
    return 0


def _ask_for_huge_pages(environ: MutableMapping[str, str]) -> None:
    """Have glibc's malloc in the processes ``serve`` starts ask the kernel for transparent huge
    pages for the memory it maps (``GLIBC_TUNABLES``, read when a process starts), unless the
    environment already says whether to.

    A scrape's buffers are large (a hundred megabytes at 100,000 executions) and, returned to
    the system after each scrape, are mapped afresh by the next one: a page fault per 2 MiB
    instead of per 4 KiB. Does nothing where the kernel grants none, or malloc is not glibc's.
    """
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" not in tunables:
        environ["GLIBC_TUNABLES"] = f"{tunables}:{HUGE_PAGES_TUNABLE}" if tunables else HUGE_PAGES_TUNABLE


def _check_free(bind: str) -> None:
    """Raise :class:`ConfigError` when something already listens at ``bind`` (HOST:PORT): one
    line, where gunicorn would retry for seconds and print each try."""
    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {bind}: {exc.strerror} (is a bridge already running there? "
                "stop it, or choose another address with --bind HOST:PORT)"
            ) from None


def _check_tracing() -> None:
    """Build and drop the tracing setup once, so a bad ``OTEL_*`` value stops the start."""
    from ..telemetry.tracing import provider_from_env

    provider = provider_from_env()
    if provider is not None:
        provider.shutdown()


if __name__ == "__main__":
    sys.exit(main())
