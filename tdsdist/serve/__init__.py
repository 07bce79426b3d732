"""`tdsdist serve`: the model pair resident as an HTTP service (engine loop, API, recording)."""
