"""Iterating a model: its builds, rollout, rollback."""
