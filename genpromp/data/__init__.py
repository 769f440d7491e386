"""Data foundation: image reading, dataset indexing, score import."""

__all__ = ["images", "indexing", "scores"]
