"""Packaging tests: the Helm chart, generated manifests, container images, compose and kind."""
