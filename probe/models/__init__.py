"""Denoiser backbones, their attention and hook points, the zoo of presets and the Denoiser."""
