"""Indexing of real-layout fixtures and rejection of bad inputs (file + line named, no output)."""

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from genpromp.data.images import image_size, read_rgb
from genpromp.data.indexing import (index_cub, index_dataset, index_imagenet, index_wsol, keep_class_ids,
                                    read_index)
from genpromp.errors import GenprompError, InputError

from data_fixtures import load_tokenizer, make_jpeg, write_cub_fixture, write_imagenet_fixture, write_wsol_fixture


# ----------------------------------------------------------------------------- image reading

def test_read_rgb_modes(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    out = read_rgb(tmp_path / "g.png")
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8 and (out[..., 1] == gray).all()

    Image.new("CMYK", (5, 4), (0, 255, 255, 0)).save(tmp_path / "c.jpg")   # pure red in CMYK
    out = read_rgb(tmp_path / "c.jpg")
    assert out.shape == (4, 5, 3) and out[..., 0].mean() > 200 and out[..., 1].mean() < 60

    a16 = (np.arange(6, dtype=np.uint16).reshape(2, 3) * 13000)
    img16 = Image.fromarray(a16)
    assert img16.mode.startswith("I;16")
    img16.save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode.startswith("I")
    out = read_rgb(tmp_path / "d.png")
    assert out.shape == (2, 3, 3)
    assert out[..., 0].tolist() == (a16 >> 8).tolist()   # scaled, not clipped to 255

    pal = Image.new("P", (3, 2))
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.putpixel((1, 1), 1)
    pal.save(tmp_path / "p.png")
    assert read_rgb(tmp_path / "p.png")[1, 1].tolist() == [10, 200, 30]


def test_read_rgb_rejects_missing_corrupt_truncated(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_rgb(tmp_path / "nope.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="bad.jpg"):
        read_rgb(tmp_path / "bad.jpg")
    good = make_jpeg(tmp_path / "ok.jpg", 64, 64)
    data = good.read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    assert image_size(tmp_path / "trunc.jpg") == (64, 64)       # the header alone looks fine
    with pytest.raises(InputError, match="truncated"):
        read_rgb(tmp_path / "trunc.jpg")


# ----------------------------------------------------------------------------- good layouts

def test_cub_fixture(tmp_path):
    root = write_cub_fixture(tmp_path / "CUB")
    idx = index_cub(root, meta_word="bird")
    assert idx.train["image_id"].tolist() == ["001.Red_Bird/Red_Bird_0001"]
    assert idx.test["image_id"].tolist() == ["001.Red_Bird/Red_Bird_0002", "002.Blue_Jay/Blue_Jay_0003"]
    assert idx.test["path"].tolist()[1] == "images/002.Blue_Jay/Blue_Jay_0003.jpg"
    assert idx.test["label"].tolist() == [0, 1]                  # 1-based shifted
    assert idx.train["boxes"][0] == [[1.0, 2.0, 11.0, 22.0]]      # x y w h -> x1 y1 x2 y2
    assert idx.test["boxes"][1] == [[5.5, 6.5, 15.5, 16.5]]
    assert (idx.test["width"].tolist(), idx.test["height"].tolist()) == ([50, 32], [20, 32])
    c = idx.classes
    assert c["name"].tolist() == ["Red_Bird", "Blue_Jay"]
    assert c["concept_token"].tolist() == ["<cub-0>", "<cub-1>"]
    assert c["meta_token"].tolist() == ["bird", "bird"]


def test_imagenet_fixture_and_parquet_schema(tmp_path):
    root = write_imagenet_fixture(tmp_path / "ILSVRC")
    out = tmp_path / "index"
    idx = index_dataset({"layout": "imagenet", "root": str(root), "token_prefix": "imagenet"}, out,
                        tokenizer=load_tokenizer())
    back = read_index(out)
    t = back.test
    assert t["image_id"].tolist() == ["n01440764/ILSVRC2012_val_00000293", "n01443537/ILSVRC2012_val_00000001"]
    assert t["path"][0] == "val/n01440764/ILSVRC2012_val_00000293.JPEG"
    assert [list(b) for b in t["boxes"][0]] == [[1, 2, 30, 20], [35, 5, 60, 40]]
    assert back.train["path"].tolist()[0] == "train/n01440764/n01440764_10026.JPEG"
    assert list(back.train["boxes"][0]) == []
    assert str(t["label"].dtype) == "int32" and str(t["width"].dtype) == "int32"
    c = back.classes
    assert c["wnid"].tolist() == ["n01440764", "n01443537"]
    assert c["name"].tolist() == ["tench", "goldfish"]
    assert c["meta_token"].tolist() == ["ch", "goldfish"]        # docs/method.md: last sub-token when no single-token synonym
    assert c["concept_token"].tolist() == ["<imagenet-0>", "<imagenet-1>"]
    assert c["synonyms"][0] == "tench, Tinca tinca"
    import pyarrow.parquet as pq
    schema = pq.read_schema(out / "test.parquet")
    assert str(schema.field("boxes").type) == "list<element: list<element: double>>"


def test_wsol_fixture(tmp_path):
    meta, images = write_wsol_fixture(tmp_path / "meta", tmp_path / "img")
    idx = index_wsol(meta, images, meta_word="thing", token_prefix="wsol")
    assert idx.test["image_id"].tolist() == ["test/a/2", "test/b/3"]
    assert [list(map(list, b)) for b in idx.test["boxes"]][0] == [[1, 2, 10, 12], [20, 5, 40, 30]]
    assert idx.classes["name"].tolist() == ["class_0", "class_1"]
    assert idx.train["boxes"].tolist() == [[]]


def test_keep_class(tmp_path):
    assert keep_class_ids(None, 4) == [0, 1, 2, 3]
    assert keep_class_ids([1, 3], 5) == [1, 2, 3]       # 2 elements: inclusive range
    assert keep_class_ids([3], 5) == [3]
    assert keep_class_ids([0, 2, 4], 5) == [0, 2, 4]
    with pytest.raises(GenprompError):
        keep_class_ids([0, 7, 8], 5)
    root = write_cub_fixture(tmp_path / "CUB")
    idx = index_cub(root, keep_class=[1], meta_word="bird")
    assert idx.test["label"].tolist() == [1] and idx.train.empty
    assert idx.classes["kept"].tolist() == [False, True] and len(idx.classes) == 2


# ----------------------------------------------------------------------------- bad inputs

CUB_BAD = [
    ("missing image", dict(images_text="1 001.Red_Bird/Red_Bird_0001.jpg\n2 001.Red_Bird/nope.jpg\n3 002.Blue_Jay/Blue_Jay_0003.jpg\n"),
     "images.txt", 2, "not found"),
    ("box outside", dict(boxes_text="1 1 2 10 20\n2 0 0 52 20\n3 5 6 10 10\n"), "bounding_boxes.txt", 2, "outside"),
    ("negative width", dict(boxes_text="1 1 2 10 20\n2 10 0 -5 20\n3 5 6 10 10\n"), "bounding_boxes.txt", 2, "x2 < x1"),
    ("zero area", dict(boxes_text="1 1 2 10 20\n2 0 0 10 0\n3 5 6 10 10\n"), "bounding_boxes.txt", 2, "zero area"),
    ("label 0", dict(labels_text="1 1\n2 0\n3 2\n"), "image_class_labels.txt", 2, "1-based"),
    ("label > classes", dict(labels_text="1 1\n2 1\n3 3\n"), "image_class_labels.txt", 3, "outside"),
    ("duplicate id", dict(images_text="1 001.Red_Bird/Red_Bird_0001.jpg\n1 001.Red_Bird/Red_Bird_0002.jpg\n3 002.Blue_Jay/Blue_Jay_0003.jpg\n"),
     "images.txt", 2, "duplicate"),
    ("dotdot", dict(images_text="1 001.Red_Bird/Red_Bird_0001.jpg\n2 ../x.jpg\n3 002.Blue_Jay/Blue_Jay_0003.jpg\n"),
     "images.txt", 2, r"\.\."),
    ("malformed", dict(boxes_text="1 1 2 10 20\n2 0 0 x 20\n3 5 6 10 10\n"), "bounding_boxes.txt", 2, "not a number"),
    ("bad split", dict(split_text="1 1\n2 2\n3 0\n"), "train_test_split.txt", 2, "split flag"),
]


@pytest.mark.parametrize("what, kwargs, fname, line, pattern", CUB_BAD, ids=[c[0] for c in CUB_BAD])
def test_cub_bad_inputs(tmp_path, what, kwargs, fname, line, pattern):
    root = write_cub_fixture(tmp_path / "CUB", **kwargs)
    out = tmp_path / "index"
    with pytest.raises(InputError, match=pattern) as err:
        index_dataset({"layout": "cub", "root": str(root), "meta_word": "bird", "token_prefix": "cub"}, out)
    assert Path(err.value.path).name == fname and err.value.line == line
    assert not out.exists()


def test_box_within_tolerance_accepted(tmp_path):
    root = write_cub_fixture(tmp_path / "CUB", boxes_text="1 -1 2 10 20\n2 0 0 51 21\n3 5 6 10 10\n")
    idx = index_cub(root, meta_word="bird")
    assert idx.test["boxes"][0] == [[0.0, 0.0, 51.0, 21.0]]   # stored as given


def test_truncated_test_image_rejected(tmp_path):
    root = write_cub_fixture(tmp_path / "CUB")
    p = root / "images/002.Blue_Jay/Blue_Jay_0003.jpg"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated") as err:
        index_cub(root, meta_word="bird")
    assert err.value.line == 3
    index_cub(root, meta_word="bird", verify="header")          # header-only check does not notice


IMAGENET_BAD = [
    ("x2 < x1", dict(val_text="n01440764/ILSVRC2012_val_00000293.JPEG 0 30 2 1 20\nn01443537/ILSVRC2012_val_00000001.JPEG 1 0 0 29 29\n"), 1, "x2 < x1"),
    ("not 4k numbers", dict(val_text="n01440764/ILSVRC2012_val_00000293.JPEG 0 1 2 30\nn01443537/ILSVRC2012_val_00000001.JPEG 1 0 0 29 29\n"), 1, "x1 y1 x2 y2"),
    ("label too big", dict(val_text="n01440764/ILSVRC2012_val_00000293.JPEG 0 1 2 30 20\nn01443537/ILSVRC2012_val_00000001.JPEG 2 0 0 29 29\n"), 2, "outside"),
    ("duplicate", dict(val_text="n01440764/ILSVRC2012_val_00000293.JPEG 0 1 2 30 20\nn01440764/ILSVRC2012_val_00000293.JPEG 0 1 2 30 20\n"), 2, "duplicate"),
    ("outside", dict(val_text="n01440764/ILSVRC2012_val_00000293.JPEG 0 1 2 30 20\nn01443537/ILSVRC2012_val_00000001.JPEG 1 0 0 29 45\n"), 2, "outside"),
]


@pytest.mark.parametrize("what, kwargs, line, pattern", IMAGENET_BAD, ids=[c[0] for c in IMAGENET_BAD])
def test_imagenet_bad_inputs(tmp_path, what, kwargs, line, pattern):
    root = write_imagenet_fixture(tmp_path / "ILSVRC", **kwargs)
    with pytest.raises(InputError, match=pattern) as err:
        index_imagenet(root, meta_word="fish")
    assert Path(err.value.path).name == "val_folder_new.txt" and err.value.line == line


def test_wsol_bad_inputs(tmp_path):
    meta, images = write_wsol_fixture(tmp_path / "meta", tmp_path / "img",
                                      loc_text="test/a/2.jpg,1,2,10,12\ntest/b/3.jpg,0,0,30\n")
    with pytest.raises(InputError, match="5 comma-separated") as err:
        index_wsol(meta, images, meta_word="thing")
    assert err.value.line == 2
    (meta / "test/image_sizes.txt").write_text("test/a/2.jpg,41,30\ntest/b/3.jpg,30,30\n")
    (meta / "test/localization.txt").write_text("test/a/2.jpg,1,2,10,12\ntest/b/3.jpg,0,0,30,30\n")
    with pytest.raises(InputError, match="disagrees") as err:
        index_wsol(meta, images, meta_word="thing")
    assert Path(err.value.path).name == "image_sizes.txt" and err.value.line == 1
