"""Stateless pipeline stages: picklable callables over samples."""
