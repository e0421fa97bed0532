"""The container side: the client library and ``heartbeat-run``. Standard library only."""
