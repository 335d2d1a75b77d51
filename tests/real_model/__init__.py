"""Tests against a real (tiny) LLM: Gemma 3 270M served by llama-cpp-python, behind the gateway."""
