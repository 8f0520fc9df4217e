"""Data layer: sources -> cached uint8 arrays -> nested/disjoint subsets -> batches."""
