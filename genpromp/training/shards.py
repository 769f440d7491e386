"""How many stage-1 shard jobs a class table gets (no torch: the workflow plans with this).

``train_token.shards`` is capped at the number of classes to train, the kept classes of the class
table (``keep_class``), so no shard is empty.
"""

from __future__ import annotations

from ..errors import GenprompError

__all__ = ["planned_shards", "token_shard_count"]


def planned_shards(n_shards, n_classes):
    """Shard jobs for ``n_classes`` trained classes: ``min(n_shards, n_classes)`` (no empty shard)."""
    if n_classes < 1:
        raise GenprompError("no classes to train")
    return min(int(n_shards), int(n_classes))


def token_shard_count(classes_parquet, n_shards):
    """Number of stage-1 shard jobs for a class table: ``train_token.shards`` capped at its kept classes."""
    from ..data.indexing import read_kept_class_ids

    return planned_shards(n_shards, len(read_kept_class_ids(classes_parquet)))
