"""Honest evaluation: held-out metrics, a no-transfer baseline, and the run report."""
