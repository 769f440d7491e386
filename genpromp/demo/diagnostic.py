"""Localization diagnostic of the pretrained tiny model: does the class word's cross-attention find the object?

Probe images are freshly rendered single-object demo scenes (:func:`genpromp.demo.world.render_scene`, the
demo datasets' distribution: non-square, then resized to the model's resolution). For each candidate
meta word (the shape noun, the colour, generic words such as "shape") the prompt "a photo of a {word}"
goes through the CAM stage's own extraction (:func:`genpromp.cams.extract.compute_pair_cams`: capturing
processors on the CAM layer groups, maps averaged over timesteps and layers, resized bicubically,
averaged over groups, divided by their maximum, clamped at 0) and each map is scored with the TS-CAM
protocol's functions from :mod:`genpromp.evaluation.metrics` (bilinear resize to the frame, min-max,
uint8, largest-contour box at a threshold, inclusive IoU) against the probe's true box.

Only the probes' latents and noise differ from the CAM stage: they are drawn in probe order from one
generator seeded with the run's seed (the probe set has no image ids).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from PIL import Image

from ..cams.extract import CamSettings, compute_pair_cams
from ..evaluation.metrics import (
    best_iou, center_gaussian_cam, prepare_cam, scale_boxes_tscam, threshold_list, tscam_box,
)
from ..prompts import TEMPLATES, token_index, tokenize
from .tiny import pixels_to_unit
from .world import COLOURS, DEFAULT_OBJECT_SIZE, DEFAULT_OUTLINE, SHAPES, TEXTURES, ObjectKind, render_scene

__all__ = ["DiagnosticSettings", "ProbeImage", "render_probe_set", "compute_word_cams", "box_ious",
           "attention_localization_score"]


@dataclass(frozen=True)
class DiagnosticSettings:
    """How the diagnostic reads and scores the maps; ``demo.tiny_model.diagnostic`` in the config.

    words: candidate words, format strings over the probe's ``colour`` / ``texture`` / ``shape``
    ("{shape}") or fixed words; timesteps: UNet timesteps averaged into a map; cam_size: map side;
    frame: TS-CAM evaluation frame; cam_thr: the box threshold the headline numbers use;
    loc_thresholds: thresholds of which the best gives ``loc_best_thr``; oracle_sweep: (start, stop,
    step) of the per-image best-threshold sweep (``oracle_thr_loc``); iou_threshold: a box counts as
    localized at IoU ≥ this; batch_size: probes per UNet batch.
    """

    words: tuple = ("{shape}", "{colour}", "shape", "object")
    timesteps: tuple = (0, 99)
    cam_size: int = 64
    frame: int = 512
    cam_thr: float = 0.23
    loc_thresholds: tuple = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
    oracle_sweep: tuple = (0.05, 0.95, 0.05)
    iou_threshold: float = 0.5
    batch_size: int = 16


@dataclass
class ProbeImage:
    """A rendered probe: uint8 [3, R, R] (resized from its original size), its kind and box in R pixels."""

    image: torch.Tensor
    colour: str
    texture: str
    shape: str
    box: tuple = field(default=())


def render_probe_set(n, resolution, image_size=(160, 256), seed=0, object_size=DEFAULT_OBJECT_SIZE,
                     outline=DEFAULT_OUTLINE):
    """``n`` single-object demo-style scenes (every (colour, texture, shape) kind in turn; objects
    ``object_size`` of the shorter side), resized to ``resolution``; boxes rescaled to that square.
    Independent of the corpus (own seed stream)."""
    kinds = [ObjectKind(*k) for k in itertools.product(COLOURS, TEXTURES, SHAPES)]
    order = np.random.default_rng([seed, 999]).permutation(len(kinds))
    probes = []
    for i in range(n):
        rng = np.random.default_rng([seed, 999, i])
        kind = kinds[order[i % len(kinds)]]
        w, h = (int(rng.integers(image_size[0], image_size[1] + 1)) for _ in range(2))
        arr, boxes = render_scene(kind, rng, w, h, 1, object_size, outline)
        img = np.asarray(Image.fromarray(arr).resize((resolution, resolution), Image.BICUBIC))
        x1, y1, x2, y2 = boxes[0]
        sx, sy = resolution / w, resolution / h
        probes.append(ProbeImage(torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1),
                                 kind.colour, kind.texture, kind.shape, (x1 * sx, y1 * sy, x2 * sx, y2 * sy)))
    return probes


@torch.no_grad()
def compute_word_cams(components, images_u8, prompts, groups, settings, seed=0):
    """CAMs of ``prompts`` (one per image; class word at the templates' token index): float32 [N, S, S].

    components: (tokenizer, text_encoder, vae, unet, scheduler); images_u8: uint8 [N, 3, R, R];
    groups: the :class:`~genpromp.cams.capture.CamGroup` s read; settings: :class:`DiagnosticSettings`.
    Per batch, posterior samples and noise are drawn from one generator seeded with ``seed``.
    """
    tokenizer, text_encoder, vae, unet, scheduler = components
    batch = int(settings.batch_size)
    cam_settings = CamSettings(resolution=int(images_u8.shape[-1]), timesteps=tuple(settings.timesteps),
                               cam_size=int(settings.cam_size), groups=tuple(groups),
                               token_index=token_index(tokenizer), seed=seed, batch_size=batch, max_pairs=batch)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, len(images_u8), batch):
        post = vae.encode(pixels_to_unit(images_u8[start:start + batch])).latent_dist
        latents = (post.mean + post.std * torch.randn(post.mean.shape, generator=gen)) * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=gen)
        cond = text_encoder(tokenize(tokenizer, prompts[start:start + batch]))[0]
        out.append(compute_pair_cams(unet, scheduler, latents, noise, cond, np.arange(len(latents)), cam_settings))
    return torch.cat(out)


def box_ious(cams, boxes, resolution, frame, thresholds):
    """IoU of each map's TS-CAM box with its true box, at each threshold: float64 [N, T].

    cams: [N, S, S] maps (tensor or array); boxes: N boxes [x1, y1, x2, y2] in pixels of the
    ``resolution``-square image; frame: the TS-CAM evaluation frame.
    """
    thresholds = [float(t) for t in thresholds]
    out = np.zeros((len(boxes), len(thresholds)), dtype=np.float64)
    for n, (cam, box) in enumerate(zip(np.asarray(cams), boxes)):
        u8 = prepare_cam(cam, frame, cv2.INTER_LINEAR)
        gt = scale_boxes_tscam([box], resolution, resolution, frame)
        out[n] = [best_iou([tscam_box(u8, t)], gt) for t in thresholds]
    return out


def _localized(ious, settings):
    """% of the rows of ``ious`` (float64 [N] or [N, T]) with IoU ≥ the settings' IoU threshold."""
    return 100.0 * (np.asarray(ious) >= settings.iou_threshold).mean(axis=0)


def _word_report(cams, boxes, resolution, settings):
    """Scores of one word's maps: loc and mean IoU at cam_thr, best of the loc thresholds, per-image oracle."""
    loc_thresholds = list(settings.loc_thresholds)
    sweep = list(threshold_list(*settings.oracle_sweep))
    ious = box_ious(cams, boxes, resolution, settings.frame, [settings.cam_thr, *loc_thresholds, *sweep])
    at_thr = ious[:, 0]
    per_thr = _localized(ious[:, 1:1 + len(loc_thresholds)], settings)
    oracle = ious[:, 1 + len(loc_thresholds):].max(axis=1)
    return {"loc": float(_localized(at_thr, settings)), "mean_iou": float(at_thr.mean()),
            "loc_best_thr": float(per_thr.max()), "oracle_thr_loc": float(_localized(oracle, settings))}


def attention_localization_score(components, probes, groups, settings=None, seed=0):
    """How well the class word's cross-attention localizes the object, per candidate word.

    For each entry of ``settings.words`` prompts "a photo of a {word}" are run through the CAM
    extraction and scored with the TS-CAM box rule. Returns ``{word: {"loc": % IoU ≥ iou_threshold at
    cam_thr, "mean_iou": mean IoU at cam_thr, "loc_best_thr": % with the best of loc_thresholds,
    "oracle_thr_loc": % with each image's best threshold of the oracle sweep}}`` plus ``"center_box"``
    (the same rule on a centred Gaussian map) as a baseline.
    """
    settings = settings or DiagnosticSettings()
    images = torch.stack([p.image for p in probes])
    resolution = images.shape[-1]
    boxes = [p.box for p in probes]
    report = {}
    for word in settings.words:
        prompts = [TEMPLATES[0].format(word.format(colour=p.colour, texture=p.texture, shape=p.shape))
                   for p in probes]
        cams = compute_word_cams(components, images, prompts, groups, settings, seed)
        report[word] = _word_report(cams, boxes, resolution, settings)
    center = np.repeat(center_gaussian_cam(settings.cam_size)[None], len(probes), axis=0)
    at_thr = box_ious(center, boxes, resolution, settings.frame, [settings.cam_thr])[:, 0]
    report["center_box"] = {"loc": float(_localized(at_thr, settings)), "mean_iou": float(at_thr.mean())}
    return report
