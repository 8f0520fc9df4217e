"""probe: train diffusion denoisers on nested subsets and explain how they generalize."""

__version__ = "0.1.0"
