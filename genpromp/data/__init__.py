"""Data foundation: image reading, the demo world, dataset indexing, score import, demo classifier."""

__all__ = ["images", "synth", "indexing", "scores", "classifier"]
