"""Noise schedules, training losses and samplers: pure functions over the Denoiser interface."""
