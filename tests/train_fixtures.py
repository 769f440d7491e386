"""Shared fixtures for the training tests: a tiny random SD-topology model and a tiny dataset.

Import the fixtures into a test module with ``from train_fixtures import *  # noqa``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from model_fixtures import TINY_SHAPES
from workflow_utils import REPO

TINY_RES = TINY_SHAPES["train"]["resolution"]

__all__ = ["tiny_model", "tiny_dataset", "make_dataset", "kept_dataset", "TINY_RES", "REPO", "stage1_settings"]

COLOURS = [(220, 40, 40), (40, 200, 60), (50, 70, 230), (230, 200, 40), (200, 60, 200)]


def make_dataset(root, n_classes=3, per_class=(3, 5, 2), seed=0, meta="bird", table_classes=None, kept=None):
    """Write small JPEGs of coloured shapes and the index tables; return (train_parquet, classes_parquet, root).

    ``table_classes``: classes in the class table (default ``n_classes``; more = classes without
    images, as a CUB layout with 200 classes but images for a few); ``kept``: class ids flagged kept
    (adds the ``kept`` column the index writes for ``keep_class``).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_classes):
        for i in range(per_class[c % len(per_class)]):
            w, h = int(rng.integers(48, 96)), int(rng.integers(48, 96))
            img = Image.new("RGB", (w, h), tuple(int(x) for x in rng.integers(0, 255, 3)))
            draw = ImageDraw.Draw(img)
            x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
            box = [x0, y0, x0 + w // 3, y0 + h // 3]
            (draw.ellipse if c % 2 else draw.rectangle)(box, fill=COLOURS[c % len(COLOURS)])
            rel = f"images/{c:03d}.cls/img_{c}_{i}.jpg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            img.save(root / rel, quality=90)
            rows.append(dict(image_id=rel[:-4], path=rel, label=np.int32(c), width=np.int32(w), height=np.int32(h),
                             boxes=[[float(v) for v in box]]))
    train = root / "index" / "train.parquet"
    train.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(train)
    n_table = table_classes or n_classes
    classes = pd.DataFrame(dict(class_id=np.arange(n_table, dtype=np.int32),
                                name=[f"class_{c}" for c in range(n_table)],
                                synonyms=[f"class {c}" for c in range(n_table)], wnid=[""] * n_table,
                                meta_token=[meta] * n_table,
                                concept_token=[f"<cub-{c}>" for c in range(n_table)]))
    if kept is not None:
        classes["kept"] = np.isin(np.arange(n_table), list(kept))
    classes_path = root / "index" / "classes.parquet"
    classes.to_parquet(classes_path)
    return train, classes_path, root


@pytest.fixture(scope="session")
def tiny_model(tiny_models):
    """A random tiny SD-topology model folder (TINY_RES px, narrow) built once per session."""
    return tiny_models("train")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """(train_parquet, classes_parquet, image_root) with 3 classes of 3 / 5 / 2 images."""
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def kept_dataset(tmp_path_factory):
    """keep_class on a CUB-like layout: a class table of 6 classes, training images for classes 0-2
    (3 / 5 / 2 images), classes 0 and 2 kept (class 1's images stay in the train table)."""
    return make_dataset(tmp_path_factory.mktemp("kept"), table_classes=6, kept=[0, 2])


def stage1_settings(**kw):
    from genpromp.training.tokens import Stage1Settings

    base = dict(resolution=TINY_RES, batch_size=2, gradient_accumulation_steps=1, num_train_epochs=2,
                learning_rate=1e-3, scale_lr=False, checkpoint_every=2, seed=3, concurrent_classes=8)
    base.update(kw)
    return Stage1Settings(**base)
