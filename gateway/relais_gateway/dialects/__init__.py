"""Client dialects, one module per wire format the gateway serves, and the translations to
OpenAI's for engines that lack one; `app.py` mounts their routers."""
