"""CAM extraction and the CAM cache (docs/FORMATS.md § CAM cache).

Modules: ``cache`` (the on-disk contract between any CAM producer and the evaluator; read and
written here only) and the extraction modules added by the CAM stage.
"""

__all__ = []
