"""Tracking and versioning runs: reading run folders, the model registry, MLflow.

Nothing here imports torch: `image_classifier_runs` lists and compares runs at once, and the serving code
resolves model names without loading the trainer. MLflow is imported only when a tracking URI is set.
"""
