"""Where a request may go: the engine table, the backend sources (static file, Kubernetes watch),
which replicas hold which adapters, and the choice of replica; the forward path and `app.py` call
it."""
