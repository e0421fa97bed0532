"""Heartbeat Bridge: turns task heartbeats into Prometheus metrics and traces."""

__all__ = ["__version__"]

__version__ = "0.1.0"
