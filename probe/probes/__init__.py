"""Probes: model -> arrays -> HDF5 under probes/<run-id>/."""
