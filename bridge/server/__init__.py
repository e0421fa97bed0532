"""The service's processes: the ``heartbeat-bridge`` command, gunicorn and its worker, the demo."""
