"""Measurements: multiply-add and parameter counts (fvcore), latency."""
