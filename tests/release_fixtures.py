"""Small stand-ins for the real data a shipped config names: a CUB_200_2011 release, an ILSVRC2012
folder, a Stable Diffusion folder (marker + tokenizer only) and a classifier score file.

``write_release_inputs(workdir, config)`` writes them at the paths the config names (relative paths
resolve against the Snakemake working directory), so a test can plan the real configs unchanged.
Every image is the same 8×8 JPEG; only the lists and the class count follow the real layouts.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from data_fixtures import SYNSETS, TOKENIZER_DIR

__all__ = ["CUB_CLASSES", "IMAGENET_CLASSES", "TEST_IMAGES", "write_cub_release", "write_ilsvrc_release",
           "write_pretrained_stub", "write_score_json", "write_release_inputs"]

CUB_CLASSES = 200
IMAGENET_CLASSES = 1000
# One image more than the shipped configs' test.shard_size (500): two CAM shards per variant.
TEST_IMAGES = 501


def _jpeg_bytes(seed=0):
    arr = np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _write_images(root, rels):
    data = _jpeg_bytes()
    for rel in rels:
        path = Path(root) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def write_cub_release(root, n_classes=CUB_CLASSES, n_test=TEST_IMAGES):
    """CUB_200_2011 files (classes, images, labels, split, boxes, images/): one training image per
    class, ``n_test`` test images spread over the classes; every box inside the 8×8 image.
    Returns the test images' ``images.txt`` paths."""
    root = Path(root)
    names = [f"{c + 1:03d}.Bird_{c + 1}" for c in range(n_classes)]
    rows = [(c, 1) for c in range(n_classes)] + [(k % n_classes, 0) for k in range(n_test)]
    rels = [f"{names[c]}/Bird_{c + 1}_{i:04d}.jpg" for i, (c, _) in enumerate(rows)]
    _write_images(root / "images", rels)
    (root / "classes.txt").write_text("".join(f"{c + 1} {n}\n" for c, n in enumerate(names)))
    (root / "images.txt").write_text("".join(f"{i + 1} {r}\n" for i, r in enumerate(rels)))
    (root / "image_class_labels.txt").write_text("".join(f"{i + 1} {c + 1}\n" for i, (c, _) in enumerate(rows)))
    (root / "train_test_split.txt").write_text("".join(f"{i + 1} {t}\n" for i, (_, t) in enumerate(rows)))
    (root / "bounding_boxes.txt").write_text("".join(f"{i + 1} 1.0 1.0 5.0 5.0\n" for i in range(len(rows))))
    return [r for r, (_, t) in zip(rels, rows) if t == 0]


def write_ilsvrc_release(root, n_classes=IMAGENET_CLASSES, n_test=TEST_IMAGES):
    """ILSVRC2012_list/{LOC_synset_mapping,train,val_folder_new}.txt with train/ and val/ images: the
    first ``n_classes`` real synsets, one training image per class, ``n_test`` boxed val images.
    Returns the val images' list paths."""
    root = Path(root)
    synsets = SYNSETS.read_text().splitlines()[:n_classes]
    wnids = [line.split()[0] for line in synsets]
    train = [(f"{w}/{w}_{c}.JPEG", c) for c, w in enumerate(wnids)]
    val = [(f"{wnids[k % n_classes]}/ILSVRC2012_val_{k + 1:08d}.JPEG", k % n_classes) for k in range(n_test)]
    _write_images(root / "train", [r for r, _ in train])
    _write_images(root / "val", [r for r, _ in val])
    lists = root / "ILSVRC2012_list"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "LOC_synset_mapping.txt").write_text("".join(f"{s}\n" for s in synsets))
    (lists / "train.txt").write_text("".join(f"{r} {c}\n" for r, c in train))
    (lists / "val_folder_new.txt").write_text("".join(f"{r} {c} 1 1 6 6\n" for r, c in val))
    return [r for r, _ in val]


def write_pretrained_stub(folder):
    """What the workflow reads of an SD folder before any job runs: the marker ``unet/config.json``
    and the CLIP tokenizer under ``tokenizer/`` (copied from the shared assets)."""
    folder = Path(folder)
    (folder / "unet").mkdir(parents=True, exist_ok=True)
    (folder / "unet" / "config.json").write_text("{}")
    shutil.copytree(TOKENIZER_DIR, folder / "tokenizer", dirs_exist_ok=True)
    return folder


def write_score_json(path, keys, n_classes, seed=0):
    """A classifier score file in the original JSON format: ``{key: {"pred_scores": [C floats]}}``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scores = np.random.default_rng(seed).random((len(keys), n_classes)).round(4)
    path.write_text(json.dumps({k: {"pred_scores": s.tolist()} for k, s in zip(keys, scores)}))
    return path


def write_release_inputs(workdir, config):
    """Write every dataset, the SD stub and the classifier files a real-data ``config`` (a dict)
    names, under ``workdir``; return {dataset name: number of classes}."""
    workdir = Path(workdir)
    write_pretrained_stub(workdir / config["pretrained"])
    classes = {}
    for name, ds in config["datasets"].items():
        if ds["layout"] == "cub":
            n = CUB_CLASSES
            keys = write_cub_release(workdir / ds["root"])
        elif ds["layout"] == "imagenet":
            n = IMAGENET_CLASSES
            keys = write_ilsvrc_release(workdir / ds["root"])
        else:
            raise ValueError(f"no stand-in for layout {ds['layout']!r} (dataset {name})")
        if ds.get("classifier"):
            write_score_json(workdir / ds["classifier"]["path"], keys, n)
        classes[name] = n
    return classes
