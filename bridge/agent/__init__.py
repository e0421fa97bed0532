"""``heartbeat-docker-agent``: reports task containers' starts, deaths and OOM kills.

Its dependencies (the Docker SDK, requests) are the ``[agent]`` extra.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the agent (see :mod:`bridge.agent.docker_agent`); returns the exit status."""
    try:
        from .docker_agent import main as run
    except ImportError as exc:
        print(f"heartbeat-docker-agent: needs pip install 'heartbeat-bridge[agent]' ({exc})", file=sys.stderr)
        return 2
    return run(argv)
