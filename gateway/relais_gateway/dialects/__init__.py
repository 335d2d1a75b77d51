"""Client dialects: wire models in and out of the canonical request and event stream."""
