"""The tiny SD-topology model folders the tests load: one builder, one folder per shape and session.

The session fixture ``tiny_models`` (tests/conftest.py) returns ``get(shape)``; the fixtures
``tiny_model_dir`` (tests/cam_fixtures.py) and ``tiny_model`` (tests/train_fixtures.py) are two of
its shapes.
"""

from __future__ import annotations

__all__ = ["TINY_SHAPES", "build_tiny_folder"]

# build_tiny_model arguments of every shape the tests use.
TINY_SHAPES = {
    # CAM tests: 128 px images, 16x16 latents, the builder's default widths
    "cams": dict(resolution=128, seed=0),
    # training tests: 64 px, narrow
    "train": dict(resolution=64, block_out_channels=(16, 16, 32, 32), cross_attention_dim=32, text_hidden_size=32,
                  text_layers=1, heads=2, vae_channels=(8, 8, 16, 16), seed=0),
    # the model's own tests: the smallest widths the topology takes
    "small": dict(resolution=64, block_out_channels=(8, 16, 16, 16), cross_attention_dim=16, text_hidden_size=16,
                  text_layers=1, heads=2, vae_channels=(8, 8, 16, 16)),
}


def build_tiny_folder(parent, tokenizer_dir, shape):
    """Write the tiny model of ``shape`` (a TINY_SHAPES key) to ``<parent>/tiny-sd``; return that path."""
    from genpromp.demo.tiny import build_tiny_model

    return build_tiny_model(parent / "tiny-sd", tokenizer_dir, **TINY_SHAPES[shape])
