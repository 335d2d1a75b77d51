"""Relais gateway: one OpenAI- and Ollama-compatible endpoint for every model."""
