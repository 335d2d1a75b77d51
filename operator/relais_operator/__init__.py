"""Relais operator: turns LLMDeployment resources into model-serving workloads."""
