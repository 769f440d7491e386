"""The part-discriminative demo world (demo.world: parts): classes differ only in the head; the boxes,
masks and meta word cover the whole bird; the corpus never shows a class's head."""

import csv

import numpy as np
import pytest

from genpromp.config import load_config
from genpromp.demo.parts import (
    BODY_NOUN,
    PartKind,
    PartSettings,
    head_radius,
    part_classes,
    render_corpus_bird,
    render_part_scene,
)
from genpromp.demo.pretrain import object_words, parse_object_kind
from genpromp.demo.world import (
    BODY_COLOURS,
    COLOURS,
    PART_LISTING,
    demo_part_listings,
    world_parts,
    write_corpus,
    write_cub_dataset,
)
from genpromp.errors import GenprompError

SETTINGS = PartSettings()


def _scene(kind, seed, settings=SETTINGS):
    return render_part_scene(kind, np.random.default_rng(seed), 220, 180, (0.35, 0.7), 0.04, settings,
                             with_masks=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classes_differ_only_inside_the_head(seed):
    """Same random stream, different class: every differing pixel lies in the head's box."""
    renders = [_scene(kind, seed) for kind in (PartKind("red", "plain"), PartKind("blue", "plain"),
                                               PartKind("red", "striped"))]
    base, boxes, masks, part_box = renders[0]
    for image, other_boxes, other_masks, other_part in renders[1:]:
        assert other_boxes == boxes and other_part == part_box and (other_masks[0] == masks[0]).all()
        ys, xs = np.nonzero((image != base).any(axis=2))
        assert len(ys) > 20  # the heads do differ
        x1, y1, x2, y2 = part_box
        assert xs.min() >= x1 and xs.max() < x2 and ys.min() >= y1 and ys.max() < y2


def test_box_and_mask_cover_the_whole_bird_and_the_head_is_a_small_share():
    shares = []
    for seed in range(12):
        _, boxes, masks, part_box = _scene(PartKind("green", "dotted"), seed)
        ys, xs = np.nonzero(masks[0])
        assert boxes[0] == [xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0]
        x1, y1, x2, y2 = part_box
        assert boxes[0][0] <= x1 < x2 <= boxes[0][2] and boxes[0][1] <= y1 < y2 <= boxes[0][3]
        assert (x2 - x1) * (y2 - y1) < 0.35 * (boxes[0][2] - boxes[0][0]) * (boxes[0][3] - boxes[0][1])
        head = np.zeros_like(masks[0])
        head[int(y1):int(y2), int(x1):int(x2)] = True
        shares.append((head & masks[0]).sum() / masks[0].sum())
    assert 0.06 < np.mean(shares) < 0.2  # part_share 0.12 (the box holds a little body too)


def test_head_radius_follows_the_share():
    assert head_radius(0.05) < head_radius(0.12) < head_radius(0.3)


def test_dataset_is_deterministic_and_lists_part_boxes(tmp_path):
    for name in ("a", "b"):
        write_cub_dataset(tmp_path / name, 2, 2, 2, seed=3, parts=SETTINGS, object_size=(0.35, 0.7))
    for rel in ("images.txt", "bounding_boxes.txt", PART_LISTING, "classes.txt"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    lines = (tmp_path / "a" / PART_LISTING).read_text().splitlines()
    images = [ln.split()[1] for ln in (tmp_path / "a" / "images.txt").read_text().splitlines()]
    assert [ln.split()[0] for ln in lines] == images
    classes = (tmp_path / "a" / "classes.txt").read_text().split()
    assert classes == ["1", "001.Red_Plain_Headed_Bird", "2", "002.Blue_Plain_Headed_Bird"]
    assert all(c.lower().endswith(BODY_NOUN) for c in classes[1::2])


def test_corpus_teaches_the_body_noun_never_a_class_head(tmp_path):
    write_corpus(tmp_path / "c", 60, 64, seed=0, parts=PartSettings(corpus_fraction=0.5))
    with open(tmp_path / "c" / "captions.csv") as fh:
        captions = [row["caption"] for row in csv.DictReader(fh)]
    birds = [c for c in captions if BODY_NOUN in c.split()]
    assert 15 <= len(birds) <= 45
    assert not any(w in COLOURS for c in birds for w in c.split())  # body colours only
    for seed in range(5):  # neutral head: no saturated class colour anywhere on a corpus bird
        image, boxes, colour = render_corpus_bird(np.random.default_rng(seed), 96, (0.4, 0.7), 0.04, SETTINGS)
        assert colour in BODY_COLOURS
        x1, y1, x2, y2 = (int(v) for v in boxes[0])
        patch = image[y1:y2, x1:x2].astype(float)
        assert (patch.max(axis=2) - patch.min(axis=2)).max() < 120


def test_pretraining_aligns_the_body_noun():
    assert BODY_NOUN in object_words() and "brown" in object_words()
    assert parse_object_kind("a photo of a brown bird") == ("brown", "plain", "bird")


def test_config_selects_the_world():
    config = load_config("config/experiment.yaml")
    assert world_parts(config["demo"]) == PartSettings(0.12, (2, 4), (0.08, 0.16), 0.4)
    assert list(demo_part_listings(config).values()) == [f"resources/experiment/CUB_200_2011/{PART_LISTING}"]
    default = load_config("config/config.yaml")
    assert world_parts(default["demo"]) is None and demo_part_listings(default) == {}
    with pytest.raises(GenprompError, match="part world"):
        part_classes(19)
