"""Operator tools run from the repository (not deployed)."""
