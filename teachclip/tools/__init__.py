"""Tools that are not DVC stages: search, export, caption audit."""
