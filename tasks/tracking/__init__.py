"""Tracking: the MLflow store, run artifacts, the model package (weights + plan) and champion promotion."""
