"""Shared fixtures of the CAM tests: a tiny SD model, concept tokens and a 7-image test set on disk.

Import the fixtures by name into a test module (``from cam_fixtures import tiny_model_dir, ...``).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from genpromp.config import load_config

__all__ = ["N_CLASSES", "LABELS", "TOP5", "tiny_model_dir", "cam_world", "load_tiny_components",
           "cam_config", "fresh_components"]

N_CLASSES = 4
# Labels and classifier top-5 of the 7 test images: images 0, 3, 6 have top-1 == GT.
LABELS = [0, 1, 2, 3, 0, 1, 2]
TOP5 = [[0, 1, 2, 3, 0], [2, 1, 0, 3, 0], [3, 0, 1, 2, 1], [3, 1, 2, 0, 0], [1, 0, 2, 3, 1],
        [0, 2, 1, 3, 0], [2, 3, 0, 1, 2]]


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_models):
    """A randomly initialised tiny SD-topology model folder (128 px, 16×16 latents)."""
    return tiny_models("cams")


def _write_images(root, rng):
    rows = []
    for i, label in enumerate(LABELS):
        w, h = int(rng.integers(100, 180)), int(rng.integers(100, 180))
        arr = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        arr[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 255 - 60 * label
        rel = f"{label:03d}.cls/img_{i}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(root / rel, quality=92)
        boxes = [[w / 4, h / 4, 3 * w / 4, 3 * h / 4]]
        rows.append(dict(image_id=rel[:-4], path=rel, label=label, width=w, height=h, boxes=boxes))
    return pd.DataFrame(rows).astype({"label": "int32", "width": "int32", "height": "int32"})


@pytest.fixture(scope="session")
def cam_world(tmp_path_factory, tiny_model_dir):
    """Dict of paths: root (images), index, classes, scores, tokens; plus ``vectors`` {token: [D]}."""
    from genpromp.training.checkpoints import save_tokens

    base = tmp_path_factory.mktemp("camworld")
    rng = np.random.default_rng(0)
    root = base / "data"
    index = _write_images(root, rng)
    index.to_parquet(base / "test.parquet")
    tokens = [f"<cub-{i}>" for i in range(N_CLASSES)]
    pd.DataFrame({"class_id": np.arange(N_CLASSES, dtype=np.int32), "name": [f"c{i}" for i in range(N_CLASSES)],
                  "synonyms": ["bird"] * N_CLASSES, "wnid": [""] * N_CLASSES, "meta_token": ["bird"] * N_CLASSES,
                  "concept_token": tokens}).to_parquet(base / "classes.parquet")
    pd.DataFrame({"image_id": index["image_id"], "top5_ids": [list(map(int, t)) for t in TOP5],
                  "top5_scores": [[0.5, 0.2, 0.1, 0.1, 0.1]] * len(TOP5),
                  "scores": [[0.25] * N_CLASSES] * len(TOP5)}).to_parquet(base / "scores.parquet")
    dim = json.loads((tiny_model_dir / "text_encoder" / "config.json").read_text())["hidden_size"]
    vectors = torch.randn(N_CLASSES, dim, generator=torch.Generator().manual_seed(1))
    save_tokens(base / "tokens.safetensors", list(range(N_CLASSES)), tokens, vectors, ["bird"] * N_CLASSES)
    return dict(base=base, root=root, index=base / "test.parquet", classes=base / "classes.parquet",
                scores=base / "scores.parquet", tokens=base / "tokens.safetensors",
                vectors=dict(zip(tokens, vectors)))


def load_tiny_components(path):
    from genpromp.models.loading import load_components

    return load_components(path)


@pytest.fixture
def fresh_components(tiny_model_dir):
    """Freshly loaded components (the tokenizer can take concept tokens once)."""
    return load_tiny_components(tiny_model_dir)


def cam_config(repo_root, model_dir, world, **test):
    """The repository config pointed at the tiny model and the test world (test.* overrides)."""
    overrides = {
        "pretrained": str(model_dir),
        "datasets": {"cub_demo": {"root": str(world["root"])}},
        "test": {"resolution": 128, "batch_size": 3, "shard_size": 4, **test},
    }
    return load_config(repo_root / "config" / "config.yaml", overrides)
