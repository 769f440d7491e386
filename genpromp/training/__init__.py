"""Training: stage-1 concept tokens, stage-2 UNet finetuning, token checkpoint formats, resume state."""

__all__ = ["data", "shards", "stage1", "stage2", "checkpoints", "resume"]
