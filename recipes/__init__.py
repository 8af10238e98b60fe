"""Training recipes (not part of the `edge` package; see recipes/voice)."""
