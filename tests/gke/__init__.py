"""Tests of deploy/gke: gcloud command lines, scripts, cloudbuild.yaml, values-gke.yaml."""
