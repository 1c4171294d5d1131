"""Predictions from a trained model: `image_classifier_predict` (files) and `image_classifier_serve` (HTTP).

Nothing here imports the training code; a model is `image_classifier.model.model.Net` with its weights, and an
image goes through the training normalisation (`image_classifier.data.batches.preprocess`).
"""
