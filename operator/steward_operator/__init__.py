"""Steward operator: reconciles ModelDeployments into serving, traffic and jobs."""
