"""The web surface: the app factory, one blueprint per surface, validation, auth, errors.

gunicorn runs ``bridge.web:create_app()``.
"""

from .app import create_app

__all__ = ["create_app"]
