"""Baselines that localize with other methods than GenPromp and write the same CAM cache format, so the
evaluation and the tables score them exactly as they score GenPromp (``cam``: a discriminative CNN's class
activation maps, Zhou et al. 2016; ``peaks``: where a cache's maps peak relative to a part region)."""
