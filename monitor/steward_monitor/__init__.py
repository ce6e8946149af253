"""Steward's monitor: stores prediction events and late-arriving outcomes, keyed by request id."""
