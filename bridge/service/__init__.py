"""The domain service the web surface and the reaper call, and the service's configuration."""
