"""CAM extraction and the CAM cache (docs/FORMATS.md § CAM cache).

Modules: ``cache`` (the on-disk contract between any CAM producer and the evaluator; read and
written here only), ``capture`` (cross-attention capture), ``embeddings`` (a run's class embeddings),
``extract`` (CAM extraction), ``reference`` (the straightforward reference loop), ``overlay`` (visual
check) and ``wsol_maps`` (wsolevaluation score maps in and out of the cache).
"""

__all__ = []
