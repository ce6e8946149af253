"""Steward predictor: serves and batch-scores sealed scikit-learn model bundles."""
