"""What a caller may do: API keys and rates (`auth`), the per-model concurrency queue
(`admission`), and keys and static deployments reloaded while running (`reload`); the edge, the
service and `app.py` call it."""
