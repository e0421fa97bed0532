"""Telemetry: the metric families (defined once), the scrape-time collector, and tracing."""
