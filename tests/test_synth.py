"""The demo world generator: determinism, real layouts, tight boxes inside the images."""

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from genpromp.data.indexing import index_cub, index_imagenet
from genpromp.errors import GenprompError
from genpromp.demo.world import (DEMO_CLASSES, COLOURS, TEXTURES, SHAPES, ObjectKind, caption_for, demo_classes,
                                 render_scene, write_corpus, write_cub_dataset, write_imagenet_dataset)

from data_fixtures import SYNSETS, load_tokenizer

KW = dict(n_classes=3, train_per_class=2, test_per_class=3, image_size=(64, 96), jpeg_quality=90)


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(Path(root).rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_classes_distinct_and_attribute_rich():
    assert len(set(DEMO_CLASSES)) == len(DEMO_CLASSES) >= 12
    for a, b in zip(DEMO_CLASSES, DEMO_CLASSES[1:]):
        assert sum(x != y for x, y in zip((a.colour, a.texture, a.shape), (b.colour, b.texture, b.shape))) >= 2
    assert len(set(demo_classes(40))) == 40
    assert demo_classes(2)[0].class_name() == "Red_Striped_Triangle"


def test_render_scene_tight_boxes():
    rng = np.random.default_rng(0)
    img, boxes = render_scene(DEMO_CLASSES[0], rng, 120, 90, n_instances=2)
    assert img.shape == (90, 120, 3) and img.dtype == np.uint8 and len(boxes) == 2
    for x1, y1, x2, y2 in boxes:
        assert 0 <= x1 < x2 <= 120 and 0 <= y1 < y2 <= 90
        red = (img[..., 0].astype(int) - img[..., 2].astype(int)) > 60
        assert red[int(y1):int(y2), int(x1):int(x2)].any()


def test_object_size_and_outline():
    """object_size bounds the object's extent (fraction of the shorter side); the outline darkens a rim
    inside the object and leaves the box and the interior as they were."""
    kind = ObjectKind("red", "plain", "square")
    for lo, hi in [(0.2, 0.3), (0.6, 0.7)]:
        for seed in range(5):
            _, boxes = render_scene(kind, np.random.default_rng(seed), 200, 160, 1, (lo, hi), outline=0.0)
            x1, y1, x2, y2 = boxes[0]
            extent = max(x2 - x1, y2 - y1) / 160
            assert lo * 0.75 <= extent <= hi * 1.05, (lo, hi, extent)   # square: 0.8 x 2 of the nominal half size, rotated
    plain, b0 = render_scene(kind, np.random.default_rng(1), 200, 160, 1, (0.5, 0.5), outline=0.0)
    rimmed, b1 = render_scene(kind, np.random.default_rng(1), 200, 160, 1, (0.5, 0.5), outline=0.05)
    assert b0 == b1
    x1, y1, x2, y2 = (int(v) for v in b0[0])
    cy, cx = (y1 + y2) // 2, (x1 + x2) // 2
    colour = np.array(COLOURS[kind.colour], float)
    assert np.abs(rimmed[cy, cx].astype(float) - plain[cy, cx]).max() <= 12          # interior: same pixels (noise only)
    changed = np.abs(rimmed.astype(float) - plain).max(-1) > 40
    ys, xs = np.nonzero(changed)
    assert changed.sum() > 50 and ys.min() >= y1 and ys.max() < y2 and xs.min() >= x1 and xs.max() < x2
    assert (rimmed[changed].mean(0) < colour * 0.5).all()                               # the rim is a dark shade
    with pytest.raises(GenprompError, match="object_size"):
        render_scene(kind, np.random.default_rng(0), 100, 100, 1, (0.5, 0.2))


def test_cub_deterministic_and_indexable(tmp_path):
    a = write_cub_dataset(tmp_path / "a", seed=3, **KW)
    b = write_cub_dataset(tmp_path / "b", seed=3, **KW)
    c = write_cub_dataset(tmp_path / "c", seed=4, **KW)
    assert _digest(a) == _digest(b) != _digest(c)
    idx = index_cub(a, meta_word="bird")
    assert len(idx.train) == 6 and len(idx.test) == 9
    assert sorted(idx.test["label"].unique()) == [0, 1, 2]
    assert all(len(bx) == 1 for bx in idx.test["boxes"])                  # real CUB: one box per image
    sizes = set(zip(idx.test["width"], idx.test["height"]))
    assert all(64 <= w <= 96 and 64 <= h <= 96 for w, h in sizes) and any(w != h for w, h in sizes)
    for bx, w, h in zip(idx.test["boxes"], idx.test["width"], idx.test["height"]):
        x1, y1, x2, y2 = bx[0]
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        assert 0.1 * min(w, h) <= max(x2 - x1, y2 - y1) <= min(w, h)
    assert (a / "classes.txt").read_text().splitlines()[1] == "2 002.Blue_Dotted_Circle"


def test_imagenet_layout_multi_instance(tmp_path):
    root = write_imagenet_dataset(tmp_path / "I", SYNSETS, multi_instance_fraction=0.5, seed=0, **KW)
    mapping = (root / "ILSVRC2012_list/LOC_synset_mapping.txt").read_text().splitlines()
    assert mapping == SYNSETS.read_text().splitlines()[:3]
    idx = index_imagenet(root, tokenizer=load_tokenizer())
    n_boxes = [len(b) for b in idx.test["boxes"]]
    assert n_boxes.count(2) == round(0.5 * 9) and set(n_boxes) == {1, 2}
    assert idx.test["image_id"][0].startswith("n01440764/ILSVRC2012_val_")
    assert idx.train["path"][0].startswith("train/n01440764/n01440764_")


def test_corpus(tmp_path):
    root = write_corpus(tmp_path / "corpus", 12, resolution=64, seed=1)
    df = pd.read_csv(root / "captions.csv")
    assert list(df.columns) == ["file", "caption", "x1", "y1", "x2", "y2"] and len(df) == 12
    assert Image.open(root / df["file"][0]).size == (64, 64)
    assert ((df.x1 >= 0) & (df.x2 <= 64) & (df.x1 < df.x2) & (df.y1 < df.y2)).all()
    words = set(" ".join(df["caption"]).split())
    assert words & set(COLOURS) and words & set(SHAPES)
    assert _digest(write_corpus(tmp_path / "c2", 12, resolution=64, seed=1)) == _digest(root)


def test_caption_words_are_single_clip_tokens():
    tok = load_tokenizer()
    rng = np.random.default_rng(0)
    words = set()
    for kind in demo_classes(40):
        for n in (1, 2):
            for _ in range(4):
                words |= set(caption_for(kind, n, rng).split())
    multi = {w for w in words if len(tok.tokenize(w)) > 1}
    assert multi <= {"triangles"}, multi
