"""Device catalogue and profiler (issue 6)."""
