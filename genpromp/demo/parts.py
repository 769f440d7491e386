"""The part-discriminative demo world (``demo.world: parts``).

Every object of every class is the same bird-like body (an ellipse with a tail, in a class-free body
colour drawn per image from ``BODY_COLOURS``) with a round head; the classes differ **only** in the
head's colour and pattern (``PartKind``). The head covers ``part_share`` of the object's area
(``demo.parts.part_share``), so a discriminatively trained classifier needs only a small region of
the object, while the localization target (box and mask) is the whole bird, head included. Every
class shares the meta word ``BODY_NOUN`` ("bird"), as every CUB class shares "bird".

Scenes are drawn on the shapes world's cluttered backgrounds (``genpromp.demo.world``) plus
``demo.parts.distractors`` distractor objects: shapes of the shapes vocabulary in the body colours
(class-free, outside the bird's box, ``distractor_size`` of the shorter side).

The pretraining corpus of this world stays class-agnostic: a share ``corpus_fraction`` of its images
shows a bird whose head has the body's own colour and no pattern, captioned with the body noun and
the body colour ("a photo of a brown bird"); the rest are the shapes world's objects. No corpus image
shows a class's head.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ..errors import GenprompError
from .world import (
    BODY_COLOURS,
    COLOURS,
    SHAPES,
    TEXTURES,
    _background,
    _check_size_range,
    _outlined,
    _place,
    _shape_points,
    _texture,
    _tight_box,
)

__all__ = [
    "BODY_NOUN",
    "BODY_PLURAL",
    "PART_PATTERNS",
    "PartKind",
    "PartSettings",
    "bird_caption",
    "head_radius",
    "part_classes",
    "part_settings",
    "render_corpus_bird",
    "render_part_scene",
]

BODY_NOUN, BODY_PLURAL = "bird", "birds"
PART_PATTERNS = ("plain", "striped", "dotted")
# Unit bird model (x to the right = the way the bird faces, y down): body ellipse, tail, head centre.
_BODY_CENTRE, _BODY_RADII = (0.0, 0.12), (0.75, 0.45)
_TAIL = ((-0.62, 0.05), (-1.0, -0.28), (-1.0, 0.32))
_HEAD_CENTRE = (0.6, -0.3)
_MAX_BIRD_ROTATION = 15.0


@dataclass(frozen=True)
class PartKind:
    """One class of the part world: the head's colour and pattern."""

    colour: str
    pattern: str

    def class_name(self):
        """``"Red_Striped_Headed_Bird"`` (CUB folder style; its last word is the body noun)."""
        return f"{self.colour.capitalize()}_{self.pattern.capitalize()}_Headed_{BODY_NOUN.capitalize()}"


def part_classes(n):
    """The first ``n`` classes: every head colour plain, then striped, then dotted (at most 18)."""
    kinds = [PartKind(c, p) for p in PART_PATTERNS for c in COLOURS]
    if n < 1 or n > len(kinds):
        raise GenprompError(f"demo.n_classes = {n}: the part world (demo.world: parts) has 1..{len(kinds)} classes")
    return kinds[:n]


@dataclass(frozen=True)
class PartSettings:
    """``demo.parts``: head share of the object area, distractor count and size, corpus bird share."""

    part_share: float = 0.12
    distractors: tuple = (2, 4)
    distractor_size: tuple = (0.08, 0.16)
    corpus_fraction: float = 0.4


def part_settings(section):
    """PartSettings from the config's ``demo.parts`` block (checked; lists as tuples)."""
    s = PartSettings(part_share=float(section["part_share"]),
                     distractors=tuple(int(v) for v in section["distractors"]),
                     distractor_size=_check_size_range(section["distractor_size"], "demo.parts.distractor_size"),
                     corpus_fraction=float(section["corpus_fraction"]))
    if not 0.02 <= s.part_share <= 0.5:
        raise GenprompError(f"demo.parts.part_share {s.part_share}: use a share of the object area in [0.02, 0.5]")
    if not 0 <= s.distractors[0] <= s.distractors[1]:
        raise GenprompError(f"demo.parts.distractors {list(s.distractors)}: need 0 <= min <= max")
    return s


def _ellipse(centre, radii, n=48):
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([centre[0] + radii[0] * np.cos(ang), centre[1] + radii[1] * np.sin(ang)], 1)


def _unit_bird(radius):
    """Polygons of the unit bird: (body ellipse, tail, head circle of ``radius``)."""
    return _ellipse(_BODY_CENTRE, _BODY_RADII), np.array(_TAIL), _ellipse(_HEAD_CENTRE, (radius, radius), 32)


def _raster_share(radius, side=256):
    """Head pixels / bird pixels of the unit bird rasterised at ``side`` px."""
    body, tail, head = _unit_bird(radius)
    to_px = lambda pts: [tuple(p) for p in (pts + 1.2) * side / 2.4]
    whole, part = Image.new("L", (side, side), 0), Image.new("L", (side, side), 0)
    for poly in (body, tail, head):
        ImageDraw.Draw(whole).polygon(to_px(poly), fill=255)
    ImageDraw.Draw(part).polygon(to_px(head), fill=255)
    return np.count_nonzero(np.asarray(part)) / np.count_nonzero(np.asarray(whole))


@functools.lru_cache(maxsize=16)
def head_radius(part_share):
    """Head radius of the unit bird whose head covers ``part_share`` of its area (bisection)."""
    lo, hi = 0.02, 0.9
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _raster_share(mid) < part_share else (lo, mid)
    return (lo + hi) / 2


def _polygon_mask(points, width, height):
    img = Image.new("L", (width, height), 0)
    ImageDraw.Draw(img).polygon([tuple(p) for p in points], fill=255)
    return np.asarray(img) > 127


def _bird_polygons(size, rng, part_share):
    """Bird polygons in pixels around the origin, its extent ~``size``: (body, tail, head), facing a
    random side, rotated by a small random angle."""
    polys = _unit_bird(head_radius(part_share))
    extent = max(np.ptp(np.concatenate(polys), 0))
    face = 1.0 if rng.uniform() < 0.5 else -1.0
    rot = math.radians(rng.uniform(-_MAX_BIRD_ROTATION, _MAX_BIRD_ROTATION))
    c, s = math.cos(rot), math.sin(rot)
    turn = np.array([[c, s], [-s, c]])
    return [((p * [face, 1.0]) * (size / extent)) @ turn for p in polys]


def _draw_bird(image, rng, size, head, body_colour, outline, part_share):
    """Place and paint one bird on ``image`` (float [H, W, 3], changed in place). ``head``: (colour, pattern).
    Returns (object mask, head mask, placed box)."""
    height, width = image.shape[:2]
    polys = _bird_polygons(size, rng, part_share)
    joined = np.concatenate(polys)
    placed, box = _place(joined, width, height, rng, [])
    if placed is None:
        raise GenprompError(f"cannot place a bird of {size:.0f} px in a {width}x{height} image; "
                            "lower demo.object_size")
    shift = placed[0] - joined[0]
    body, tail, head_poly = (p + shift for p in polys)
    head_mask = _polygon_mask(head_poly, width, height)
    mask = _polygon_mask(body, width, height) | _polygon_mask(tail, width, height) | head_mask
    head_size = 2.0 * float(np.ptp(head_poly[:, 0]))  # pattern period ~ head diameter / 2
    surface = _texture("plain", body_colour, rng, height, width, size)
    if outline > 0:  # the dark rim runs round the body; the head keeps its full colour and pattern
        mask_img = Image.fromarray(mask.astype(np.uint8) * 255)
        surface = _outlined(surface, mask, mask_img, body_colour, max(1, int(round(outline * size))))
    surface = np.where(head_mask[..., None], _texture(head[1], head[0], rng, height, width, head_size), surface)
    image[:] = np.where(mask[..., None], surface, image)
    return mask, head_mask, box


def _draw_distractors(image, rng, settings, taken):
    """Class-free shapes in body colours around the bird (skipped where none fits)."""
    height, width = image.shape[:2]
    side = min(width, height)
    lo, hi = settings.distractors
    for _ in range(int(rng.integers(lo, hi + 1))):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = list(BODY_COLOURS)[int(rng.integers(len(BODY_COLOURS)))]
        texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
        size = rng.uniform(*settings.distractor_size) * side
        pts, box = _place(_shape_points(shape, size, rng), width, height, rng, taken)
        if pts is None:
            continue
        mask = _polygon_mask(pts, width, height)
        image[:] = np.where(mask[..., None], _texture(texture, colour, rng, height, width, size), image)
        taken.append(box)


def _finish(image, rng):
    image = image + rng.normal(0, 3.0, image.shape)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def render_part_scene(kind, rng, width, height, size_range, outline, settings, with_masks=False):
    """One bird of class ``kind`` (PartKind) and the distractors on a cluttered background.

    Returns ``(image uint8 [H, W, 3], boxes, part_box)``: ``boxes`` holds the one box of the whole bird
    (tight, ``x2``/``y2`` exclusive, as the shapes world's), ``part_box`` the tight box of the visible
    head; with ``with_masks`` ``(image, boxes, masks, part_box)`` with the bird's pixel mask.
    """
    image = _background(rng, height, width)
    lo, hi = _check_size_range(size_range)
    body_colour = list(BODY_COLOURS)[int(rng.integers(len(BODY_COLOURS)))]
    size = rng.uniform(lo, hi) * min(width, height)
    mask, head_mask, box = _draw_bird(image, rng, size, (kind.colour, kind.pattern), body_colour, outline,
                                      settings.part_share)
    _draw_distractors(image, rng, settings, [box])
    image = _finish(image, rng)
    boxes, part_box = [_tight_box(mask)], _tight_box(head_mask)
    return (image, boxes, [mask], part_box) if with_masks else (image, boxes, part_box)


def render_corpus_bird(rng, resolution, size_range, outline, settings):
    """A corpus bird: body and head in the same body colour, no pattern (no class's head), no
    distractors. Returns ``(image, boxes, body colour)``."""
    image = _background(rng, resolution, resolution)
    lo, hi = _check_size_range(size_range, "demo.corpus_object_size")
    colour = list(BODY_COLOURS)[int(rng.integers(len(BODY_COLOURS)))]
    mask, _, _ = _draw_bird(image, rng, rng.uniform(lo, hi) * resolution, (colour, "plain"), colour, outline,
                            settings.part_share)
    return _finish(image, rng), [_tight_box(mask)], colour


def bird_caption(colour, rng):
    """A caption of a corpus bird ("a photo of a brown bird", "a bird", ...)."""
    options = [f"a photo of a {colour} {BODY_NOUN}", f"a {colour} {BODY_NOUN}", f"a photo of a {BODY_NOUN}",
               f"a {BODY_NOUN}", f"a picture of a {BODY_NOUN} in {colour}", f"a plain {colour} {BODY_NOUN}"]
    return options[int(rng.integers(len(options)))]
