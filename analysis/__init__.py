"""Metrics, tables and plots regenerated from saved results."""
