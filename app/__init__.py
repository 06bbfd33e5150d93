"""The HTTP API (FastAPI). Never imports torch; talks to workers by task name."""
