"""Shared helpers for the data-foundation tests: tiny hand-written real-layout datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["ASSETS", "TOKENIZER_DIR", "SYNSETS", "make_jpeg", "write_cub_fixture", "write_imagenet_fixture",
           "write_wsol_fixture", "load_tokenizer"]

from workflow_utils import REPO

ASSETS = REPO / "resources" / "assets"
TOKENIZER_DIR = ASSETS / "clip_tokenizer"
SYNSETS = ASSETS / "LOC_synset_mapping.txt"
_TOKENIZER = None


def load_tokenizer():
    global _TOKENIZER
    if _TOKENIZER is None:
        from transformers import CLIPTokenizer
        _TOKENIZER = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))
    return _TOKENIZER


def make_jpeg(path, width, height, seed=0):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format="JPEG", quality=90)
    return path


def write_cub_fixture(root, boxes_text=None, labels_text=None, images_text=None, split_text=None):
    """3 images, 2 classes: ids 1, 2 train/test of class 1; id 3 test of class 2 (1-based labels)."""
    root = Path(root)
    make_jpeg(root / "images/001.Red_Bird/Red_Bird_0001.jpg", 40, 30, 1)
    make_jpeg(root / "images/001.Red_Bird/Red_Bird_0002.jpg", 50, 20, 2)
    make_jpeg(root / "images/002.Blue_Jay/Blue_Jay_0003.jpg", 32, 32, 3)
    (root / "classes.txt").write_text("1 001.Red_Bird\n2 002.Blue_Jay\n")
    (root / "images.txt").write_text(images_text or
                                     "1 001.Red_Bird/Red_Bird_0001.jpg\n2 001.Red_Bird/Red_Bird_0002.jpg\n"
                                     "3 002.Blue_Jay/Blue_Jay_0003.jpg\n")
    (root / "image_class_labels.txt").write_text(labels_text or "1 1\n2 1\n3 2\n")
    (root / "train_test_split.txt").write_text(split_text or "1 1\n2 0\n3 0\n")
    (root / "bounding_boxes.txt").write_text(boxes_text or "1 1.0 2.0 10.0 20.0\n2 0.0 0.0 50.0 20.0\n3 5.5 6.5 10.0 10.0\n")
    return root


def write_imagenet_fixture(root, val_text=None, train_text=None, mapping_text=None):
    root = Path(root)
    make_jpeg(root / "train/n01440764/n01440764_10026.JPEG", 40, 30, 1)
    make_jpeg(root / "train/n01443537/n01443537_7.JPEG", 30, 40, 2)
    make_jpeg(root / "val/n01440764/ILSVRC2012_val_00000293.JPEG", 60, 40, 3)
    make_jpeg(root / "val/n01443537/ILSVRC2012_val_00000001.JPEG", 30, 30, 4)
    lists = root / "ILSVRC2012_list"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "LOC_synset_mapping.txt").write_text(mapping_text or "n01440764 tench, Tinca tinca\n"
                                                  "n01443537 goldfish, Carassius auratus\n")
    (lists / "train.txt").write_text(train_text or "n01440764/n01440764_10026.JPEG 0\nn01443537/n01443537_7.JPEG 1\n")
    (lists / "val_folder_new.txt").write_text(
        val_text or "n01440764/ILSVRC2012_val_00000293.JPEG 0 1 2 30 20 35 5 60 40\n"
                    "n01443537/ILSVRC2012_val_00000001.JPEG 1 0 0 29 29\n")
    return root


def write_wsol_fixture(meta, images, loc_text=None):
    meta, images = Path(meta), Path(images)
    make_jpeg(images / "train/a/1.jpg", 20, 10, 1)
    make_jpeg(images / "test/a/2.jpg", 40, 30, 2)
    make_jpeg(images / "test/b/3.jpg", 30, 30, 3)
    for split, rows in (("train", [("train/a/1.jpg", 0, 20, 10)]),
                        ("test", [("test/a/2.jpg", 0, 40, 30), ("test/b/3.jpg", 1, 30, 30)])):
        d = meta / split
        d.mkdir(parents=True, exist_ok=True)
        (d / "image_ids.txt").write_text("".join(f"{r[0]}\n" for r in rows))
        (d / "class_labels.txt").write_text("".join(f"{r[0]},{r[1]}\n" for r in rows))
        (d / "image_sizes.txt").write_text("".join(f"{r[0]},{r[2]},{r[3]}\n" for r in rows))
    (meta / "test/localization.txt").write_text(
        loc_text or "test/a/2.jpg,1,2,10,12\ntest/a/2.jpg,20,5,40,30\ntest/b/3.jpg,0,0,30,30\n")
    return meta, images
