"""Figures and summaries, drawn only from files that probes and metrics wrote."""
