"""Metrics: arrays (HDF5) -> tidy tables. Metrics never plot."""
