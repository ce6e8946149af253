"""Shared test support: small real models and the data they were trained on."""
