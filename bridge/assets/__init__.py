"""The files the repository ships in ``alerts/``, ``dashboards/`` and ``deploy/prometheus.yml``,
found at run time.

An installed package carries them as package data beside this file (``pyproject.toml``
maps the folders here); a checkout run in place has them at the repository's root.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["asset"]

_PACKAGED = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGED.parent.parent


def asset(*parts: str) -> Path:
    """Return the path of a shipped file, such as ``asset("alerts", "alertmanager.yml")``.

    Raises :class:`FileNotFoundError` when neither the package nor a checkout holds it.
    """
    for base in (_PACKAGED, _CHECKOUT):
        path = base.joinpath(*parts)
        if path.exists():
            return path
    raise FileNotFoundError(f"{'/'.join(parts)} is in neither {_PACKAGED} nor {_CHECKOUT}")
