"""The demo world: deterministic synthetic WSOL datasets and a captioned pretraining corpus.

Every object is a *(colour, texture, shape)* combination ("red striped triangle"); a demo class is
one combination, so class identity is visible in appearance (demo classes differ in two or three
attributes where possible, see ``DEMO_CLASSES``). Objects (by default 25 %–65 % of the shorter image
side, ``object_size``; corpus 25 %–75 %; at a random position and a small random rotation) are drawn on cluttered backgrounds that carry no class
information: a low-saturation base colour of uniformly random hue, smooth low-frequency shading,
low-contrast ellipses and lines in colours near the base colour, and pixel noise — all drawn
independently of the class. Image sides are drawn independently from ``image_size = [min, max]``,
so images are (almost always) not square.

Boxes are tight around the drawn object's pixels: ``[x1, y1, x2, y2]`` with ``x2 = last column + 1``
(the exclusive convention of CUB's ``x + w``), in pixels of the written image.

Layouts written (the real ones, so the real indexers read them):

* CUB_200_2011 (``write_cub_dataset``): ``images/<NNN>.<Class_Name>/<Class_Name>_<kkkk>.jpg``,
  ``images.txt``, ``image_class_labels.txt`` (1-based), ``train_test_split.txt``,
  ``bounding_boxes.txt`` (``x y w h`` floats), ``classes.txt``. Real CUB has exactly one box per
  image, so this layout contains single-instance images only (``multi_instance_fraction`` is
  ignored here).
* ILSVRC (``write_imagenet_dataset``): ``ILSVRC2012_list/LOC_synset_mapping.txt`` (the first C
  lines of the real 1000-class mapping: real synset ids and names), ``ILSVRC2012_list/train.txt``
  (``n01440764/n01440764_10000.JPEG 0``, images under ``train/``) and
  ``ILSVRC2012_list/val_folder_new.txt`` (``n01440764/ILSVRC2012_val_00000001.JPEG 0 x1 y1 x2 y2
  [x1 y1 x2 y2 ...]``, integer boxes, images under ``val/`` — the same convention as the
  reference's ``val_folder_new.txt``: the listed path is relative to ``val/``). A fraction
  ``multi_instance_fraction`` of the images (exactly ``round(fraction * n)`` per split) shows two
  instances of the class and has two boxes.
* Object masks of the test images (both dataset layouts) in wsolevaluation's mask layout, for PxAP:
  ``masks/localization.txt`` with one line ``image_path,mask_path,ignore_path`` per object (image
  path as the layout lists it: relative to ``images/`` for CUB, to ``val/`` for ILSVRC; mask paths
  relative to ``masks/``), one 0/255 PNG per object and an all-zero ignore PNG per image.
* Corpus (``write_corpus``): ``images/<nnnnnn>.png`` (square ``resolution``) and ``captions.csv``
  with columns ``file, caption, x1, y1, x2, y2``; one object (75 %) or two objects of the same
  kind (25 %) drawn from the full vocabulary (6 colours × 5 textures × 6 shapes); the box columns
  give the union box of all instances. Captions use plain words with varied phrasing; every
  colour, texture and shape word is a single CLIP token (plural "triangles" is the exception).

Part world (``demo.world: parts``, ``genpromp.demo.parts``): the CUB-layout datasets show one shared
bird-like body per image whose head alone carries the class, and list every image's head box in
``part_boxes.txt`` (``<images.txt path> x1 y1 x2 y2``); a share of the corpus shows birds with neutral heads.

Randomness: every image has its own ``numpy.random.Generator`` seeded from
``(seed, layout, class, index)``, so outputs are identical for the same seed and independent of
the order in which images are produced.
"""

from __future__ import annotations

import colorsys
import csv
import io
import itertools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import GenprompError, InputError
from ..io import atomic_dir

__all__ = [
    "COLOURS", "TEXTURES", "SHAPES", "TEXTURE_NOUNS", "SHAPE_PLURALS", "ObjectKind", "DEMO_CLASSES",
    "demo_classes", "render_scene", "caption_for", "write_cub_dataset", "write_imagenet_dataset",
    "write_corpus", "write_demo_world", "demo_dataset_targets", "DATASET_MARKERS", "demo_markers", "demo_scores_path", "register_cli",
    "MASK_LISTING", "BODY_COLOURS", "WORLDS", "PART_LISTING", "demo_part_listings", "world_parts",
]

log = logging.getLogger(__name__)

COLOURS = {
    "red": (214, 38, 38),
    "blue": (38, 78, 216),
    "green": (34, 158, 58),
    "yellow": (238, 206, 34),
    "purple": (136, 52, 186),
    "orange": (244, 132, 24),
}
TEXTURES = ("plain", "striped", "dotted", "checked", "wavy")
TEXTURE_NOUNS = {"striped": "stripes", "dotted": "dots", "checked": "checks", "wavy": "waves"}
SHAPES = ("triangle", "circle", "square", "star", "diamond", "cross")
SHAPE_PLURALS = {s: s + "s" for s in SHAPES} | {"cross": "crosses"}
# Part world (``demo.world: parts``, genpromp.demo.parts): every object is a bird-like body in one of
# these class-free colours; only its head (colour x pattern) tells the classes apart.
BODY_COLOURS = {
    "brown": (124, 84, 50),
    "grey": (118, 118, 126),
    "black": (54, 52, 56),
}
WORLDS = ("shapes", "parts")

# Layout codes that enter the per-image seeds.
_LAYOUT_CUB, _LAYOUT_IMAGENET, _LAYOUT_CORPUS = 1, 2, 3
_SPLIT_TRAIN, _SPLIT_TEST = 0, 1


@dataclass(frozen=True)
class ObjectKind:
    """One (colour, texture, shape) combination."""

    colour: str
    texture: str
    shape: str

    def words(self):
        """``"red striped triangle"``."""
        return f"{self.colour} {self.texture} {self.shape}"

    def class_name(self):
        """``"Red_Striped_Triangle"`` (CUB folder style)."""
        return "_".join(w.capitalize() for w in self.words().split())


# Demo classes in order; consecutive classes differ in at least two attributes.
DEMO_CLASSES = tuple(ObjectKind(*k.split()) for k in (
    "red striped triangle", "blue dotted circle", "green checked square", "yellow plain star",
    "purple wavy diamond", "orange striped cross", "blue checked triangle", "red dotted square",
    "green wavy star", "yellow striped circle", "purple plain cross", "orange dotted diamond",
    "red wavy circle", "green plain triangle", "blue striped star", "yellow checked cross",
))


def demo_classes(n):
    """The first ``n`` demo classes; beyond ``DEMO_CLASSES`` the remaining combinations follow
    in a fixed order. At most 6 × 5 × 6 = 180 classes exist."""
    kinds = list(DEMO_CLASSES)
    if n > len(kinds):
        rest = [ObjectKind(*c) for c in itertools.product(COLOURS, TEXTURES, SHAPES)]
        rest = [k for k in rest if k not in set(kinds)]
        order = np.random.default_rng(12345).permutation(len(rest))
        kinds += [rest[i] for i in order]
    if n < 1 or n > len(kinds):
        raise GenprompError(f"demo.n_classes = {n}: the demo world has 1..{len(kinds)} distinct classes")
    return kinds[:n]


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

def _unit_polygon(shape):
    """Vertices [K, 2] of ``shape`` around the origin with radius ~1 (circle: None)."""
    if shape == "triangle":
        ang = np.deg2rad([-90, 30, 150])
        return np.stack([np.cos(ang), np.sin(ang)], 1)
    if shape == "square":
        return np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]])
    if shape == "diamond":
        return np.array([[0.0, -1.0], [0.62, 0.0], [0.0, 1.0], [-0.62, 0.0]])
    if shape == "star":
        ang = np.deg2rad(-90 + 36 * np.arange(10))
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1)
    if shape == "cross":
        a, b = 0.3, 1.0
        return np.array([[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a], [a, b], [-a, b],
                         [-a, a], [-b, a], [-b, -a], [-a, -a]])
    if shape == "circle":
        ang = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        return np.stack([0.95 * np.cos(ang), 0.95 * np.sin(ang)], 1)
    raise GenprompError(f"unknown shape {shape!r}")


_MAX_ROTATION = {"triangle": 25, "square": 15, "diamond": 15, "star": 36, "cross": 20, "circle": 0}


def _shape_points(shape, size, rng):
    """Rotated vertices [K, 2] (pixels, centred on 0) of a shape whose extent is ~``size``."""
    pts = _unit_polygon(shape) * (size / 2.0)
    rot = np.deg2rad(rng.uniform(-_MAX_ROTATION[shape], _MAX_ROTATION[shape]))
    c, s = math.cos(rot), math.sin(rot)
    return pts @ np.array([[c, s], [-s, c]])


def _hsv_rgb(h, s, v):
    return np.array(colorsys.hsv_to_rgb(h, s, v)) * 255.0


def _background(rng, height, width):
    """Cluttered class-independent background, float32 [H, W, 3] in 0..255."""
    base = _hsv_rgb(rng.uniform(), rng.uniform(0.04, 0.22), rng.uniform(0.45, 0.8))
    img = Image.new("RGB", (width, height), tuple(int(c) for c in base))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(6, 15))):
        col = tuple(int(c) for c in np.clip(base + rng.normal(0, 12, 3) + rng.normal(0, 14), 0, 255))
        x0, y0 = rng.uniform(-0.2, 1.0) * width, rng.uniform(-0.2, 1.0) * height
        w, h = rng.uniform(0.08, 0.5) * width, rng.uniform(0.08, 0.5) * height
        if rng.uniform() < 0.6:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=col)
        else:
            draw.line([x0, y0, x0 + w, y0 + h * rng.choice([-1, 1])], fill=col,
                      width=int(rng.integers(1, 5)))
    img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 2.0))))
    arr = np.asarray(img, dtype=np.float32)
    gh, gw = max(2, height // 24), max(2, width // 24)
    shade = (rng.normal(0, 4, (gh, gw, 3)) + rng.normal(0, 10, (gh, gw, 1))).astype(np.float32)
    shade = np.stack([np.asarray(Image.fromarray(shade[:, :, c], mode="F").resize((width, height), Image.BILINEAR))
                      for c in range(3)], 2)
    return arr + shade


def _rgb(colour):
    """RGB of a class colour (``COLOURS``) or a body colour of the part world (``BODY_COLOURS``)."""
    if colour in COLOURS:
        return COLOURS[colour]
    if colour in BODY_COLOURS:
        return BODY_COLOURS[colour]
    raise GenprompError(f"unknown colour {colour!r}")


def _texture(texture, colour, rng, height, width, size):
    """Object surface [H, W, 3] float32: the class colour with the class texture."""
    col = np.array(_rgb(colour), np.float32) * rng.uniform(0.9, 1.08)
    dark = col * 0.35
    light = col * 0.3 + 255 * 0.7
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    period = max(4.0, size / rng.uniform(3.5, 6.0))
    theta = rng.uniform(0, np.pi)
    u = xx * math.cos(theta) + yy * math.sin(theta)
    v = -xx * math.sin(theta) + yy * math.cos(theta)
    if texture == "plain":
        grad = (u - u.mean()) / max(float(np.ptp(u)), 1.0) * 30.0
        return np.clip(col[None, None] + grad[..., None], 0, 255)
    if texture == "striped":
        on = (np.mod(u, period) < period / 2)
        second = dark
    elif texture == "wavy":
        on = np.mod(u + period * 0.45 * np.sin(2 * np.pi * v / (2.2 * period)), period) < period / 2
        second = dark
    elif texture == "checked":
        on = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
        second = dark
    elif texture == "dotted":
        du, dv = np.mod(u, period) - period / 2, np.mod(v, period) - period / 2
        on = (du * du + dv * dv) > (period * 0.27) ** 2
        second = light
    else:
        raise GenprompError(f"unknown texture {texture!r}")
    return np.where(on[..., None], col[None, None], second[None, None]).astype(np.float32)


def _place(points, width, height, rng, taken):
    """Translate ``points`` to a random spot inside the image not overlapping ``taken`` boxes."""
    lo, hi = points.min(0), points.max(0)
    for _ in range(60):
        tx = rng.uniform(-lo[0] + 1, width - 2 - hi[0])
        ty = rng.uniform(-lo[1] + 1, height - 2 - hi[1])
        box = (lo[0] + tx, lo[1] + ty, hi[0] + tx, hi[1] + ty)
        if all(box[2] + 3 < t[0] or t[2] + 3 < box[0] or box[3] + 3 < t[1] or t[3] + 3 < box[1] for t in taken):
            return points + np.array([tx, ty]), box
    return None, None


def _tight_box(mask):
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


DEFAULT_OBJECT_SIZE = (0.25, 0.65)         # demo datasets and probes: fraction of the shorter image side
DEFAULT_CORPUS_OBJECT_SIZE = (0.25, 0.75)  # pretraining corpus
_MAX_TWO_INSTANCE_SIZE = 0.4               # two instances must fit side by side
DEFAULT_OUTLINE = 0.04                     # dark rim: fraction of the object extent


def _check_size_range(size_range, key="demo.object_size"):
    lo, hi = (float(v) for v in size_range)
    if not 0 < lo <= hi <= 1:
        raise GenprompError(f"{key} [{lo}, {hi}]: need 0 < min <= max <= 1 (fractions of the shorter image side)")
    return lo, hi


def _outlined(surface, mask, mask_img, colour, width):
    """``surface`` with the ``width``-pixel inner rim of ``mask`` (bool [H, W]; ``mask_img`` the same as
    a PIL "L" image) painted in a dark shade of ``colour``."""
    inner = np.asarray(mask_img.filter(ImageFilter.MinFilter(2 * width + 1))) > 127
    rim = mask & ~inner
    dark = np.array(_rgb(colour), np.float32) * 0.3
    return np.where(rim[..., None], dark[None, None], surface)


def render_scene(kind, rng, width, height, n_instances=1, size_range=DEFAULT_OBJECT_SIZE, outline=DEFAULT_OUTLINE,
                 with_masks=False):
    """Draw ``n_instances`` objects of ``kind`` on a cluttered background.

    ``size_range``: [min, max] object extent as a fraction of the shorter image side (two instances:
    max capped at 0.4, and shrunk further until both fit). ``outline``: width of a dark rim inside
    the object's edge, as a fraction of its extent (0 = none).

    Returns ``(image uint8 [H, W, 3], boxes)`` with boxes a list of ``[x1, y1, x2, y2]`` floats,
    tight around each object's pixels, ``x2``/``y2`` exclusive; with ``with_masks`` also the list of
    each object's pixel mask (bool [H, W]) as a third element. The masks draw no random numbers, so
    the image is the same either way.
    """
    image = _background(rng, height, width)
    side = min(width, height)
    lo, hi = _check_size_range(size_range)
    if n_instances > 1:
        hi = min(hi, _MAX_TWO_INSTANCE_SIZE)
        lo = min(lo, hi)
    taken, boxes, masks = [], [], []
    for _ in range(n_instances):
        frac = rng.uniform(lo, hi)
        while True:
            pts, box = _place(_shape_points(kind.shape, frac * side, rng), width, height, rng, taken)
            if pts is not None:
                break
            frac *= 0.85
            if frac * side < 6:
                raise GenprompError(f"cannot place {n_instances} objects in a {width}x{height} image")
        mask_img = Image.new("L", (width, height), 0)
        ImageDraw.Draw(mask_img).polygon([tuple(p) for p in pts], fill=255)
        mask = np.asarray(mask_img) > 127
        surface = _texture(kind.texture, kind.colour, rng, height, width, frac * side)
        if outline > 0:
            surface = _outlined(surface, mask, mask_img, kind.colour, max(1, int(round(outline * frac * side))))
        image = np.where(mask[..., None], surface, image)
        taken.append(box)
        boxes.append(_tight_box(mask))
        masks.append(mask)
    image = image + rng.normal(0, 3.0, image.shape)
    image = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    return (image, boxes, masks) if with_masks else (image, boxes)


def caption_for(kind, n_instances, rng):
    """A plain-words caption with varied phrasing ("a red triangle with stripes")."""
    c, t, s = kind.colour, kind.texture, kind.shape
    noun = TEXTURE_NOUNS.get(t)
    if n_instances == 1:
        options = [f"a photo of a {c} {t} {s}", f"a {c} {t} {s}", f"a {t} {c} shape",
                   f"a picture of a {t} {s} in {c}"]
        options += [f"a {c} {s} with {noun}", f"a photo of a {c} {s} with {noun}"] if noun else \
            [f"a plain {c} {s}", f"a {c} {s}"]
    else:
        p = SHAPE_PLURALS[s]
        options = [f"two {c} {t} {p}", f"a photo of two {c} {t} {p}", f"two {t} {c} shapes"]
        options += [f"two {c} {p} with {noun}"] if noun else [f"two plain {c} {p}"]
    return options[int(rng.integers(len(options)))]


def _image_rng(seed, layout, split, class_id, index):
    return np.random.default_rng([int(seed), layout, split, int(class_id), int(index)])


def _random_size(rng, image_size):
    lo, hi = int(image_size[0]), int(image_size[1])
    if lo > hi:
        raise GenprompError(f"demo.image_size [{lo}, {hi}]: min must not exceed max")
    return int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))


def _save_jpeg(array, path, quality):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="JPEG", quality=int(quality))


MASK_LISTING = "masks/localization.txt"  # object masks of the test images, inside the dataset root


def _save_masks(masks_dir, image_rel, masks, lines):
    """Write one PNG (0 / 255) per object of a test image and an all-zero ignore mask (every object is
    annotated) in wsolevaluation's mask layout; append the listing lines
    ``image_rel,<stem>_m<k>.png,<stem>_ignore.png`` (ignore path on the first line only)."""
    stem = image_rel.rsplit(".", 1)[0]
    (masks_dir / stem).parent.mkdir(parents=True, exist_ok=True)
    ignore = f"{stem}_ignore.png"
    Image.fromarray(np.zeros(masks[0].shape, np.uint8)).save(masks_dir / ignore, format="PNG")
    for k, mask in enumerate(masks):
        name = f"{stem}_m{k}.png"
        Image.fromarray(mask.astype(np.uint8) * 255).save(masks_dir / name, format="PNG")
        lines.append(f"{image_rel},{name},{ignore if k == 0 else ''}\n")


def _multi_flags(n, fraction, seed, layout, split):
    """Exactly ``round(fraction * n)`` True entries at deterministic positions."""
    flags = np.zeros(n, bool)
    k = int(round(fraction * n))
    if k:
        flags[np.random.default_rng([int(seed), layout, split, 999]).permutation(n)[:k]] = True
    return flags


# ---------------------------------------------------------------------------------------------
# Dataset writers
# ---------------------------------------------------------------------------------------------

def _scene_renderer(parts, object_size, outline):
    """``render(kind, rng, width, height) -> (image, boxes, masks, part_box)``: the shapes world's
    one-object scene (part_box None) or, with ``parts`` (PartSettings), the part world's."""
    if parts is None:
        return lambda kind, rng, w, h: (*render_scene(kind, rng, w, h, 1, object_size, outline, with_masks=True), None)
    from .parts import render_part_scene
    return lambda kind, rng, w, h: render_part_scene(kind, rng, w, h, object_size, outline, parts, with_masks=True)


PART_LISTING = "part_boxes.txt"  # part world: the head box of every image, inside the dataset root


def write_cub_dataset(root, n_classes, train_per_class, test_per_class, image_size=(160, 256),
                      jpeg_quality=92, seed=0, object_size=DEFAULT_OBJECT_SIZE, outline=DEFAULT_OUTLINE, parts=None):
    """Write a CUB_200_2011-layout dataset at ``root`` (atomically, replacing it). Returns root.

    The test images' object masks go to ``masks/`` with the listing ``masks/localization.txt``
    (image paths relative to ``images/``; see ``_save_masks``). ``parts``: a
    :class:`genpromp.demo.parts.PartSettings` draws the part world instead (classes differ only in
    the bird's head) and writes ``part_boxes.txt``: one line ``<images.txt path> x1 y1 x2 y2`` per
    image (the visible head's tight box, exclusive ``x2``/``y2``)."""
    if parts is None:
        kinds = demo_classes(n_classes)
    else:
        from .parts import part_classes
        kinds = part_classes(n_classes)
    render = _scene_renderer(parts, object_size, outline)
    images, labels, split, bboxes, mask_lines, part_lines = [], [], [], [], [], []
    with atomic_dir(root) as tmp:
        for c, kind in enumerate(kinds):
            folder = f"{c + 1:03d}.{kind.class_name()}"
            n = train_per_class + test_per_class
            order = np.random.default_rng([int(seed), _LAYOUT_CUB, 7, c]).permutation(n)
            for k in range(n):
                is_train = bool(order[k] < train_per_class)
                rng = _image_rng(seed, _LAYOUT_CUB, 0, c, k)
                width, height = _random_size(rng, image_size)
                arr, boxes, masks, part_box = render(kind, rng, width, height)
                rel = f"{folder}/{kind.class_name()}_{k + 1:04d}.jpg"
                _save_jpeg(arr, tmp / "images" / rel, jpeg_quality)
                if part_box is not None:
                    part_lines.append(f"{rel} " + " ".join(f"{v:.0f}" for v in part_box) + "\n")
                if not is_train:
                    _save_masks(tmp / "masks", rel, masks, mask_lines)
                images.append(rel)
                labels.append(c + 1)
                split.append(1 if is_train else 0)
                x1, y1, x2, y2 = boxes[0]
                bboxes.append((x1, y1, x2 - x1, y2 - y1))
        ids = range(1, len(images) + 1)
        (tmp / "images.txt").write_text("".join(f"{i} {p}\n" for i, p in zip(ids, images)))
        (tmp / "image_class_labels.txt").write_text("".join(f"{i} {lab}\n" for i, lab in zip(ids, labels)))
        (tmp / "train_test_split.txt").write_text("".join(f"{i} {s}\n" for i, s in zip(ids, split)))
        (tmp / "bounding_boxes.txt").write_text(
            "".join(f"{i} {x:.1f} {y:.1f} {w:.1f} {h:.1f}\n" for i, (x, y, w, h) in zip(ids, bboxes)))
        (tmp / "classes.txt").write_text(
            "".join(f"{c + 1} {c + 1:03d}.{k.class_name()}\n" for c, k in enumerate(kinds)))
        (tmp / "masks").mkdir(exist_ok=True)
        (tmp / MASK_LISTING).write_text("".join(mask_lines))
        if parts is not None:
            (tmp / PART_LISTING).write_text("".join(part_lines))
    return Path(root)


def _read_synsets(path, n):
    lines = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
    if len(lines) < n:
        raise InputError(path, f"has {len(lines)} classes; the demo needs {n}")
    for i, ln in enumerate(lines[:n]):
        if " " not in ln or not ln.startswith("n"):
            raise InputError(path, f"expected 'nXXXXXXXX description', got {ln!r}", i + 1)
    return lines[:n]


def write_imagenet_dataset(root, synset_mapping_path, n_classes, train_per_class, test_per_class,
                           multi_instance_fraction=0.2, image_size=(160, 256), jpeg_quality=92, seed=0,
                           object_size=DEFAULT_OBJECT_SIZE, outline=DEFAULT_OUTLINE):
    """Write an ILSVRC2012_list-layout dataset at ``root`` (atomically, replacing it). Returns root.

    The val images' object masks (two for two-instance images) go to ``masks/`` with the listing
    ``masks/localization.txt`` (image paths relative to ``val/``; see ``_save_masks``)."""
    kinds = demo_classes(n_classes)
    synsets = _read_synsets(synset_mapping_path, n_classes)
    wnids = [ln.split(" ", 1)[0] for ln in synsets]
    multi = {s: _multi_flags(n_classes * n, multi_instance_fraction, seed, _LAYOUT_IMAGENET, s)
             for s, n in ((_SPLIT_TRAIN, train_per_class), (_SPLIT_TEST, test_per_class))}
    train_lines, val_lines, mask_lines = [], [], []
    with atomic_dir(root) as tmp:
        val_counter = 0
        for c, (kind, wnid) in enumerate(zip(kinds, wnids)):
            for k in range(train_per_class):
                rng = _image_rng(seed, _LAYOUT_IMAGENET, _SPLIT_TRAIN, c, k)
                width, height = _random_size(rng, image_size)
                n_inst = 2 if multi[_SPLIT_TRAIN][c * train_per_class + k] else 1
                arr, _ = render_scene(kind, rng, width, height, n_inst, object_size, outline)
                rel = f"{wnid}/{wnid}_{10000 + k}.JPEG"
                _save_jpeg(arr, tmp / "train" / rel, jpeg_quality)
                train_lines.append(f"{rel} {c}\n")
        for c, (kind, wnid) in enumerate(zip(kinds, wnids)):
            for k in range(test_per_class):
                val_counter += 1
                rng = _image_rng(seed, _LAYOUT_IMAGENET, _SPLIT_TEST, c, k)
                width, height = _random_size(rng, image_size)
                n_inst = 2 if multi[_SPLIT_TEST][c * test_per_class + k] else 1
                arr, boxes, masks = render_scene(kind, rng, width, height, n_inst, object_size, outline,
                                                 with_masks=True)
                rel = f"{wnid}/ILSVRC2012_val_{val_counter:08d}.JPEG"
                _save_jpeg(arr, tmp / "val" / rel, jpeg_quality)
                _save_masks(tmp / "masks", rel, masks, mask_lines)
                coords = " ".join(str(int(v)) for b in boxes for v in b)
                val_lines.append(f"{rel} {c} {coords}\n")
        lists = tmp / "ILSVRC2012_list"
        lists.mkdir()
        (lists / "LOC_synset_mapping.txt").write_text("".join(ln + "\n" for ln in synsets))
        (lists / "train.txt").write_text("".join(train_lines))
        (lists / "val_folder_new.txt").write_text("".join(val_lines))
        (tmp / "masks").mkdir(exist_ok=True)
        (tmp / MASK_LISTING).write_text("".join(mask_lines))
    return Path(root)


def _corpus_bird(rng, resolution, object_size, outline, parts):
    """(image, boxes, caption) of a part-world corpus bird (neutral head, see genpromp.demo.parts)."""
    from .parts import bird_caption, render_corpus_bird
    arr, boxes, colour = render_corpus_bird(rng, resolution, object_size, outline, parts)
    return arr, boxes, bird_caption(colour, rng)


def write_corpus(root, n, resolution=128, seed=0, two_fraction=0.25, object_size=DEFAULT_CORPUS_OBJECT_SIZE,
                 outline=DEFAULT_OUTLINE, parts=None):
    """Write the captioned pretraining corpus (``captions.csv`` + ``images/*.png``). Returns root.

    ``parts`` (PartSettings): a share ``parts.corpus_fraction`` of the images is a part-world bird with
    a neutral head (never a class's head); the rest are the shapes world's objects."""
    vocabulary = [ObjectKind(*c) for c in itertools.product(COLOURS, TEXTURES, SHAPES)]
    with atomic_dir(root) as tmp:
        (tmp / "images").mkdir()
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["file", "caption", "x1", "y1", "x2", "y2"])
        for i in range(n):
            rng = _image_rng(seed, _LAYOUT_CORPUS, 0, 0, i)
            rel = f"images/{i:06d}.png"
            if parts is not None and rng.uniform() < parts.corpus_fraction:
                arr, boxes, caption = _corpus_bird(rng, resolution, object_size, outline, parts)
                Image.fromarray(arr).save(tmp / rel, format="PNG")
                writer.writerow([rel, caption, *(int(v) for v in boxes[0])])
                continue
            kind = vocabulary[int(rng.integers(len(vocabulary)))]
            n_inst = 2 if rng.uniform() < two_fraction else 1
            arr, boxes = render_scene(kind, rng, resolution, resolution, n_inst, object_size, outline)
            Image.fromarray(arr).save(tmp / rel, format="PNG")
            b = np.array(boxes)
            union = [b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()]
            writer.writerow([rel, caption_for(kind, n_inst, rng), *(int(v) for v in union)])
        (tmp / "captions.csv").write_text(buf.getvalue())
    return Path(root)


def demo_dataset_targets(config):
    """``{name: (layout, root)}`` of the configured cub/imagenet datasets whose root lies under
    ``demo.root`` (those are generated by the demo world)."""
    demo_root = Path(config["demo"]["root"]).resolve()
    out = {}
    for name, ds in config["datasets"].items():
        root = Path(ds["root"]).resolve()
        if ds["layout"] in ("cub", "imagenet") and (demo_root == root or demo_root in root.parents):
            out[name] = (ds["layout"], ds["root"])
    return out


# Per layout, a listing file the generator writes and the indexer reads: the rules wait for it.
DATASET_MARKERS = {"cub": "images.txt", "imagenet": "ILSVRC2012_list/val_folder_new.txt"}


def demo_markers(config):
    """``{name: marker file path}`` of every dataset the demo world writes (see ``demo_dataset_targets``);
    empty with ``demo.enabled`` false or without a ``demo`` section."""
    if not config.get("demo", {}).get("enabled"):
        return {}
    return {name: f"{root}/{DATASET_MARKERS[layout]}" for name, (layout, root) in demo_dataset_targets(config).items()}


def demo_part_listings(config):
    """``{name: part-box listing path}`` of every dataset the demo world writes as a part world
    (``demo.world: parts``; CUB layout); empty otherwise."""
    demo = config.get("demo", {})
    if not demo.get("enabled") or demo.get("world", "shapes") != "parts":
        return {}
    return {name: f"{root}/{PART_LISTING}" for name, (layout, root) in demo_dataset_targets(config).items()
            if layout == "cub"}


def demo_scores_path(demo_root, dataset):
    """Where the demo classifier writes a dataset's test scores (the path the demo config's
    ``datasets.<d>.classifier.path`` names)."""
    return f"{demo_root}/classifications/{dataset}_democls.json"


def world_parts(demo):
    """The part world's PartSettings for the config's ``demo`` block (``demo.world: parts``), else None."""
    if demo.get("world", "shapes") not in WORLDS:
        raise GenprompError(f"config key demo.world: {demo.get('world')!r}; use one of {', '.join(WORLDS)}")
    if demo.get("world", "shapes") == "shapes":
        return None
    from .parts import part_settings
    return part_settings(demo["parts"])


def write_demo_world(config, synset_mapping_path, what=("datasets", "corpus")):
    """Write every demo dataset of ``config`` (see ``demo_dataset_targets``) and the corpus."""
    demo, seed = config["demo"], int(config["seed"])
    parts = world_parts(demo)
    common = dict(n_classes=demo["n_classes"], train_per_class=demo["train_per_class"],
                  test_per_class=demo["test_per_class"], image_size=demo["image_size"],
                  jpeg_quality=demo["jpeg_quality"], seed=seed,
                  object_size=_check_size_range(demo["object_size"]), outline=float(demo["outline"]))
    written = []
    if "datasets" in what:
        for name, (layout, root) in demo_dataset_targets(config).items():
            t0 = time.perf_counter()
            if layout == "cub":
                write_cub_dataset(root, parts=parts, **common)
            elif parts is not None:
                raise GenprompError(f"dataset {name}: demo.world parts writes CUB-layout datasets only; use "
                                    "layout cub or demo.world shapes")
            else:
                write_imagenet_dataset(root, synset_mapping_path,
                                       multi_instance_fraction=demo["multi_instance_fraction"], **common)
            log.info("demo dataset %s (%s) written to %s in %.1f s", name, layout, root, time.perf_counter() - t0)
            written.append(Path(root))
    if "corpus" in what:
        t0 = time.perf_counter()
        corpus = Path(demo["root"]) / "corpus"
        write_corpus(corpus, demo["corpus_size"], demo["tiny_model"]["resolution"], seed,
                     object_size=_check_size_range(demo["corpus_object_size"], "demo.corpus_object_size"),
                     outline=float(demo["outline"]), parts=parts)
        log.info("corpus of %d images written to %s in %.1f s", demo["corpus_size"], corpus, time.perf_counter() - t0)
        written.append(corpus)
    return written


def _cli(args):
    from ..config import load_config
    config = load_config(args.config)
    write_demo_world(config, args.synset_mapping, tuple(args.what))


def register_cli(sub):
    p = sub.add_parser("demo-world", help="generate the synthetic demo datasets and pretraining corpus",
                       description="Generate the demo world from the config's `demo:` block: every "
                                   "cub/imagenet dataset whose root lies under demo.root, in the real "
                                   "CUB_200_2011 / ILSVRC2012_list layouts, and the captioned corpus "
                                   "demo.root/corpus. Deterministic for a given `seed`.")
    p.add_argument("--config", default="config/config.yaml", help="workflow config YAML (default: %(default)s)")
    p.add_argument("--synset-mapping", default="resources/assets/LOC_synset_mapping.txt",
                   help="the 1000-class LOC_synset_mapping.txt whose first n_classes lines name the "
                        "ImageNet-layout demo classes (built by `genpromp assets`; default: %(default)s)")
    p.add_argument("--what", nargs="+", choices=["datasets", "corpus"], default=["datasets", "corpus"],
                   help="what to generate (default: both)")
    p.set_defaults(func=_cli)
