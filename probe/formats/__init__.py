"""File formats of the probes' outputs: group and dataset names, writers and readers.

One module per probe file, on a layer below the probes, so that probes write these files and
metrics and report read them without importing the probes (see the README's layer order).
"""
