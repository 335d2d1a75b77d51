"""The edge every request crosses first and last: the bounded HTTP protocol, the ASGI middleware
(request id, key, body limits, CORS), logs, traces, metrics and the FastAPI dependencies the
routes read; `main` and `app.py` wire it up."""
